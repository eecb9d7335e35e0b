"""Zero-annotation video: discovered first-frame objects as a label map, paired by IoU with annotated objects."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torch import nn

from .discovery import discover, extract_features
from .labels import VOID_LABEL
from .masks import iou_matrix


def match_objects(pred_masks: np.ndarray, gt_masks: list[np.ndarray]) -> dict[int, int]:
    """One-to-one matching of predicted to ground-truth objects maximising the summed IoU (Hungarian).

    Returns {pred index: gt index} for the pairs with IoU > 0: with more objects on one side than on
    the other, the extra ones stay unpaired, and a pair that does not overlap at all is no pair."""
    iou = iou_matrix(pred_masks, gt_masks)  # (P, G)
    if iou.size == 0:
        return {}
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] > 0}


def objects_to_labels(masks: np.ndarray, annotation: np.ndarray | None = None) -> np.ndarray:
    """A label map (H, W) uint8 from object masks (objects, H, W), earlier objects winning overlaps.

    Without `annotation` object i gets label i + 1. With one (H, W ids, 0 background, 255 void), used only
    so that J&F can be scored: each object paired by `match_objects` takes its annotated object's id, and
    unpaired objects are dropped."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    if annotation is None:
        for i, mask in enumerate(masks):
            labels[mask & (labels == 0)] = i + 1
        return labels
    if annotation.shape != labels.shape:
        raise ValueError(f"annotation of {annotation.shape[::-1]} pixels, the frame is {labels.shape[::-1]}")
    ids = [int(i) for i in np.unique(annotation) if i not in (0, VOID_LABEL)]
    for k, j in match_objects(masks, [annotation == i for i in ids]).items():
        labels[masks[k] & (labels == 0)] = ids[j]
    return labels


def discovered_labels(model: nn.Module, image: Image.Image, annotation: np.ndarray | None = None,
                      method: str = "tokencut", resize: int | tuple[int, ...] | None = None,
                      **kwargs) -> np.ndarray:
    """A first-frame label map (H, W) uint8 found by discovery instead of drawn (see `objects_to_labels`)."""
    result = discover(extract_features(model, image, resize), method, **kwargs)
    return objects_to_labels(result.masks, annotation)
