"""Scoring discovered objects against ground truth: CorLoc and the best-object Jaccard."""

from __future__ import annotations

import numpy as np

from .masks import box_iou, mask_iou


def corloc_hit(pred_boxes: list[list[float]], gt_boxes: list[list[float]], threshold: float = 0.5) -> bool:
    """CorLoc for one image: some predicted box has IoU >= 0.5 with some ground-truth box."""
    return any(box_iou(p, g) >= threshold for p in pred_boxes for g in gt_boxes)


def best_jaccard(pred_masks: np.ndarray, gt_fg: np.ndarray, void: np.ndarray) -> float:
    """Jaccard of the predicted object that best matches the ground-truth foreground (void ignored;
    1 when both are empty, as the attention Jaccard and DAVIS score it)."""
    if len(pred_masks) == 0:
        return mask_iou(np.zeros_like(gt_fg), gt_fg, void, empty=1.0)
    return max(mask_iou(m, gt_fg, void, empty=1.0) for m in pred_masks)
