"""Saliency scores as TokenCut's unsupervised_saliency_detection/metric.py computes them: maxFβ, IoU and accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .masks import mask_iou

BETA_SQ = 0.3  # metric.py's betta_sq: precision weighted over recall, the saliency literature's choice
PROB_BINS = 255
# metric.py's thresholds: np.arange(0.0, 1.0, 1.0 / prob_bins), i.e. 0, 1/255, ..., 254/255; a pixel is
# predicted at threshold t when prediction > t (strictly), so a binary mask counts as foreground at every one.
THRESHOLDS = np.arange(0.0, 1.0, 1.0 / PROB_BINS)


def _foreground(mask: np.ndarray) -> np.ndarray:
    """metric.py's `mask > 0.5`: ground truth read as 8-bit grayscale, so any non-zero pixel, or a soft map."""
    return np.asarray(mask) > 0.5


def image_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the prediction and the ground truth, both thresholded at 0.5 (metric.IoU).

    Both empty: metric.py divides 0 by 0 and the NaN spoils the dataset mean; here it counts 1 (nothing to find,
    nothing found), the DAVIS convention. The saliency benchmarks have no empty ground truth, so no score changes.
    """
    return mask_iou(_foreground(pred), _foreground(gt), empty=1.0)


def image_accuracy(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of pixels where the prediction (thresholded at 0.5) agrees with the ground truth (metric.accuracy)."""
    return float(np.mean(_foreground(pred) == _foreground(gt)))


def precision_recall_curve(pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray = THRESHOLDS
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of `pred > t` against the ground truth at each threshold: two (T,) float64 arrays.

    As metric.precision_recall: an empty prediction has precision 1, an empty ground truth recall 1. Counted
    from sorted values (one sort instead of 255 passes over the image); the comparison runs in the prediction's
    own float type, as torch compares a tensor with a Python float.
    """
    pred = np.asarray(pred)
    if pred.shape != np.shape(gt):
        raise ValueError(f"prediction of shape {pred.shape}, ground truth of shape {np.shape(gt)}")
    values = pred.astype(pred.dtype if np.issubdtype(pred.dtype, np.floating) else np.float64).ravel()
    t = np.asarray(thresholds).astype(values.dtype)
    fg = (np.asarray(gt) != 0).ravel()  # metric.py: mask_gt.to(torch.bool)
    all_sorted, fg_sorted = np.sort(values), np.sort(values[fg])
    predicted = len(values) - np.searchsorted(all_sorted, t, side="right")  # (T,) pixels with pred > t
    tp = len(fg_sorted) - np.searchsorted(fg_sorted, t, side="right")
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 1.0)
    recall = tp / len(fg_sorted) if len(fg_sorted) else np.ones(len(t))
    return precision, recall


def f_beta(precision: np.ndarray, recall: np.ndarray, beta_sq: float = BETA_SQ) -> np.ndarray:
    """F-measure (1 + β²) P R / (β² P + R), 0 where undefined (metric.F_score's NaN handling)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (1 + beta_sq) * precision * recall / (beta_sq * precision + recall)
    return np.nan_to_num(f, nan=0.0)


@dataclass
class SaliencyScores:
    """Accumulates images one at a time (never holding their masks) and reports metric.metrics' numbers."""

    thresholds: np.ndarray = field(default_factory=lambda: THRESHOLDS.copy())
    ious: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    f_curves: list[np.ndarray] = field(default_factory=list)  # (T,) F per threshold, per image

    def add(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Score one image (pred soft or binary (H, W), gt grayscale (H, W)); returns its own IoU, Acc and max F."""
        iou, acc = image_iou(pred, gt), image_accuracy(pred, gt)
        f = f_beta(*precision_recall_curve(pred, gt, self.thresholds))
        self.ious.append(iou)
        self.accuracies.append(acc)
        self.f_curves.append(f)
        return {"IoU": iou, "Acc": acc, "maxFbeta": float(f.max())}

    def __len__(self) -> int:
        return len(self.ious)

    def summary(self) -> dict[str, float]:
        """maxFbeta: F averaged over images at each threshold, then the maximum; IoU and Acc: per-image means."""
        if not self.ious:
            raise ValueError("no image was scored")
        return {"maxFbeta": float(np.mean(self.f_curves, axis=0).max()), "IoU": float(np.mean(self.ious)),
                "Acc": float(np.mean(self.accuracies))}


def saliency_metrics(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """metric.metrics(preds, gts) for whole lists: {"maxFbeta", "IoU", "Acc"} as fractions."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth masks")
    scores = SaliencyScores()
    for pred, gt in zip(preds, gts):
        scores.add(pred, gt)
    return scores.summary()
