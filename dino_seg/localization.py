"""Scoring discovered objects against ground truth: box IoU, CorLoc, best-object Jaccard, VOC XML boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from .attention import jaccard
from .images import ImageError
from .labels import VOID_LABEL, read_label_png


def box_iou(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes in continuous pixel coordinates (x1, y1 exclusive)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def corloc_hit(pred_boxes: list[list[float]], gt_boxes: list[list[float]], threshold: float = 0.5) -> bool:
    """CorLoc for one image: some predicted box has IoU >= 0.5 with some ground-truth box."""
    return any(box_iou(p, g) >= threshold for p in pred_boxes for g in gt_boxes)


def read_voc_boxes(path: str | Path) -> list[list[float]]:
    """Object boxes of a PASCAL VOC annotation XML, [x0, y0, x1, y1] in pixel coordinates.

    VOC corners are 1-based inclusive pixel indices: as LOST does, xmin and ymin lose 1, so
    (1, W) covers the whole width [0, W). Difficult and truncated objects are kept (LOST's default).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ImageError(f"{path}: cannot read VOC annotation ({err})") from None
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ImageError(f"{path}: an object's bndbox lacks numeric xmin/ymin/xmax/ymax") from None
        boxes.append([x0 - 1, y0 - 1, x1, y1])
    return boxes


def read_gt_objects(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Ground-truth objects of a mask PNG: (one boolean mask per object, void mask).

    Palette PNGs: each index but 0 and 255 (void) is one object. Other modes: all non-zero pixels are one object.
    """
    mask = read_label_png(path, what="mask", error=ImageError, binary_255="object", accept="any")
    if mask.palette:
        ids = [int(i) for i in np.unique(mask.labels) if i not in (0, VOID_LABEL)]
        return [mask.labels == i for i in ids], mask.void
    fg = mask.labels > 0
    return ([fg] if fg.any() else []), mask.void


def mask_box(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] extent of a boolean mask (exclusive ends)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def best_jaccard(pred_masks: np.ndarray, gt_fg: np.ndarray, void: np.ndarray) -> float:
    """Jaccard of the predicted object that best matches the ground-truth foreground (void ignored)."""
    if len(pred_masks) == 0:
        return jaccard(np.zeros_like(gt_fg), gt_fg, void)
    return max(jaccard(m, gt_fg, void) for m in pred_masks)


def find_ground_truth(gt_dir: Path, stem: str) -> Path | None:
    """The ground truth of an image by stem: a mask PNG, else a VOC XML (also under Annotations/)."""
    for candidate in (gt_dir / f"{stem}.png", gt_dir / f"{stem}.xml", gt_dir / "Annotations" / f"{stem}.xml"):
        if candidate.is_file():
            return candidate
    return None


def match_objects(pred_masks: np.ndarray, gt_masks: list[np.ndarray]) -> dict[int, int]:
    """One-to-one matching of predicted to ground-truth objects maximising total IoU (Hungarian).

    Returns {pred index: gt index} for pairs with IoU > 0.
    """
    from scipy.optimize import linear_sum_assignment

    if len(pred_masks) == 0 or len(gt_masks) == 0:
        return {}
    iou = np.zeros((len(pred_masks), len(gt_masks)))
    for i, p in enumerate(pred_masks):
        for j, g in enumerate(gt_masks):
            union = np.logical_or(p, g).sum()
            iou[i, j] = np.logical_and(p, g).sum() / union if union else 0.0
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] > 0}
