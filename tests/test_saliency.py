"""Saliency scores (maxFβ, IoU, Acc) against hand values and a transcription of TokenCut's metric.py."""

import numpy as np
import pytest
import torch

import reference_saliency as ref
from dino_seg.saliency import THRESHOLDS, SaliencyScores, precision_recall_curve, saliency_metrics


def _hand_case():
    gt1 = np.array([[255, 0], [0, 0]], dtype=np.uint8)
    pred1 = np.array([[1, 1], [0, 0]], dtype=np.float64)  # binary: P 1/2, R 1 at every threshold
    gt2 = np.array([[255, 255], [0, 0]], dtype=np.uint8)
    pred2 = np.array([[0.9, 0.2], [0.6, 0.0]])  # soft
    return [pred1, pred2], [gt1, gt2]


def test_hand_values():
    preds, gts = _hand_case()
    out = saliency_metrics(preds, gts)
    assert out["IoU"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["Acc"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    f1 = 1.3 * 0.5 / (0.3 * 0.5 + 1)  # image 1 at every threshold
    f2 = 1.3 * 0.5 / (0.3 + 0.5)  # image 2 for 0.6 <= t < 0.9: P 1, R 1/2, its best
    assert out["maxFbeta"] == pytest.approx((f1 + f2) / 2)


def test_thresholds_and_empty_cases():
    assert len(THRESHOLDS) == 255 and THRESHOLDS[0] == 0 and THRESHOLDS[-1] == pytest.approx(254 / 255)
    p, r = precision_recall_curve(np.zeros((3, 3)), np.zeros((3, 3), dtype=np.uint8))
    assert (p == 1).all() and (r == 1).all()  # nothing predicted, nothing to find
    p, r = precision_recall_curve(np.ones((2, 2)), np.array([[0, 9], [0, 0]], dtype=np.uint8))
    assert (p == 0.25).all() and (r == 1).all()  # any non-zero ground-truth pixel is foreground
    with pytest.raises(ValueError, match="no image"):
        SaliencyScores().summary()


def test_matches_transcription_of_metric_py():
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for i in range(6):
        h, w = rng.integers(8, 24, 2)
        gt = np.zeros((h, w), dtype=np.uint8)
        gt[rng.integers(0, h // 2):rng.integers(h // 2 + 1, h + 1), rng.integers(0, w // 2):] = 255
        if i % 2:  # soft maps (the solver's output, even outside [0, 1]), else binary masks (the coarse ones)
            pred = rng.normal(0.5, 0.4, (h, w)) + 0.3 * (gt > 0)
        else:
            pred = (rng.random((h, w)) < 0.4).astype(np.float64)
        preds.append(pred)
        gts.append(gt)
    ours, theirs = saliency_metrics(preds, gts), ref.metrics(preds, gts)
    assert ours["IoU"] == pytest.approx(theirs["IoU"], abs=1e-6)
    assert ours["Acc"] == pytest.approx(theirs["accuracy"], abs=1e-6)
    assert ours["maxFbeta"] == pytest.approx(theirs["F_max"], abs=1e-6)
    scores = SaliencyScores()
    per_image = [scores.add(p, g) for p, g in zip(preds, gts)]
    assert scores.summary() == pytest.approx(ours)
    assert per_image[0]["IoU"] == pytest.approx(ref.IoU(torch.from_numpy(gts[0]), torch.from_numpy(preds[0])), abs=1e-6)
