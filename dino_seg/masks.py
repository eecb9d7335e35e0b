"""Overlap of boolean masks and boxes: the one IoU, box IoU and a mask's box extent."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray, void: np.ndarray | None = None, empty: float = 0.0) -> float:
    """Intersection over union of two boolean masks, `void` pixels ignored; `empty` when the union is empty.

    `empty` is the score of two empty masks: 1 for ground-truth scoring (DAVIS's db_eval_iou, the
    attention Jaccard: nothing predicted where there is nothing), 0 for comparing detections."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    if void is not None:
        keep = ~np.asarray(void, dtype=bool)
        a, b = a & keep, b & keep
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else float(empty)


def iou_matrix(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """IoU of every mask of `a` with every mask of `b`: (len(a), len(b)) float64, 0 for two empty masks."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = np.stack([np.asarray(m, dtype=bool).ravel() for m in a]).astype(np.float64)  # (A, P)
    fb = np.stack([np.asarray(m, dtype=bool).ravel() for m in b]).astype(np.float64)  # (B, P)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"masks of {fa.shape[1]} and {fb.shape[1]} pixels cannot be compared")
    inter = fa @ fb.T  # (A, B) pixel counts, exact in float64 below 2**53 pixels
    union = fa.sum(axis=1)[:, None] + fb.sum(axis=1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes in continuous pixel coordinates (x1, y1 exclusive); 0 for empty boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_extent(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] extent of a non-empty boolean mask (H, W) in its own cells (x1, y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("an empty mask has no extent")
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
