"""Scoring a discovery run: one row per image, and a summary with a `coarse` and a `refined` block, each
{maxFbeta, IoU, Acc} as TokenCut's metric.py computes them plus {CorLoc, Jaccard}, all fractions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .discovery_data import read_saliency_gt
from .groundtruth import read_gt_objects, read_voc_boxes
from .images import ImageError
from .localization import best_jaccard, corloc_hit
from .masks import mask_extent
from .refine import RefinedObjects
from .saliency import SaliencyScores
from .tables import score_table

BLOCK = ("maxFbeta", "IoU", "Acc", "CorLoc", "Jaccard")
STAGES = ("coarse", "refined")


@dataclass
class GroundTruth:
    """What one image is scored against: boxes (CorLoc) and, from a mask, the mask itself."""

    boxes: list[list[float]]
    gray: np.ndarray | None = None  # (H, W) uint8, the mask read as get_saliency.py reads it (non-zero: object)
    fg: np.ndarray | None = None  # (H, W) bool, foreground without void, for the best-object Jaccard
    void: np.ndarray | None = None


def ground_truth(path: str | Path, no_hard: bool = False) -> GroundTruth:
    """A mask PNG (boxes: its objects' extents) or a VOC XML (boxes only)."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return GroundTruth(read_voc_boxes(path, no_hard))
    objects, void = read_gt_objects(path)
    fg = np.logical_or.reduce(objects) if objects else np.zeros(void.shape, dtype=bool)
    return GroundTruth([mask_extent(o) for o in objects], read_saliency_gt(path), fg, void)


def _check_shape(gt: GroundTruth, masks: np.ndarray, name: str) -> None:
    if gt.gray is not None and gt.gray.shape != masks.shape[1:]:
        raise ImageError(f"{name}: ground-truth mask of {gt.gray.shape[::-1]} pixels, the image is "
                         f"{masks.shape[2:0:-1]}")


@dataclass
class _Stage:
    saliency: SaliencyScores = field(default_factory=SaliencyScores)
    corloc: list[float] = field(default_factory=list)
    jaccard: list[float] = field(default_factory=list)

    def add(self, gt: GroundTruth, prediction: np.ndarray, masks: np.ndarray, boxes: list[list[float]]
            ) -> dict[str, float | str]:
        row: dict[str, float | str] = {k: "" for k in BLOCK}
        if gt.gray is not None:
            row.update(self.saliency.add(prediction, gt.gray))  # per-image IoU, Acc and its own max F
            row["Jaccard"] = best_jaccard(masks, gt.fg, gt.void)
            self.jaccard.append(row["Jaccard"])
        row["CorLoc"] = float(corloc_hit(boxes, gt.boxes))
        self.corloc.append(row["CorLoc"])
        return row

    def summary(self) -> dict[str, float | None]:
        out: dict[str, float | None] = dict.fromkeys(BLOCK)
        if len(self.saliency):
            out.update(self.saliency.summary())
        out["CorLoc"] = float(np.mean(self.corloc)) if self.corloc else None
        out["Jaccard"] = float(np.mean(self.jaccard)) if self.jaccard else None
        return out


class DiscoveryScores:
    """Per-image scores of the coarse objects and, when refined, of the refinement; the run's summary.

    Coarse saliency prediction: the union of the object masks (TokenCut's one mask). Refined: the solver's soft
    output (the maximum over objects), as get_saliency.py scores it; CorLoc and Jaccard use the refined masks and
    the boxes recomputed from them."""

    def __init__(self, refined: bool = False) -> None:
        self.stages = {"coarse": _Stage()} | ({"refined": _Stage()} if refined else {})
        self.rows: list[dict[str, float | str | int]] = []

    def add(self, image: str, gt: GroundTruth, masks: np.ndarray, boxes: list[list[float]],
            refined: RefinedObjects | None = None) -> dict:
        """Score one image: coarse masks (objects, H, W) and boxes, and with a refined run its refinement."""
        masks = np.asarray(masks, dtype=bool)
        _check_shape(gt, masks, image)
        union = masks.any(axis=0) if len(masks) else np.zeros(masks.shape[1:], dtype=bool)
        row: dict[str, float | str | int] = {"image": image, "objects": len(boxes)}
        coarse = self.stages["coarse"].add(gt, union.astype(np.float64), masks, boxes)
        row.update({k.lower() if k in ("Jaccard", "CorLoc") else k: v for k, v in coarse.items()})
        if "refined" in self.stages:
            if refined is None:
                raise ValueError("a refined run needs each image's refinement")
            out = self.stages["refined"].add(gt, refined.soft, refined.masks, refined.boxes)
            row.update({f"refined_{k}": v for k, v in out.items()})
        self.rows.append(row)
        return row

    def __len__(self) -> int:
        return len(self.rows)

    def summary(self) -> dict:
        return {"images": len(self.rows), **{name: stage.summary() for name, stage in self.stages.items()}}

    def table(self) -> str:
        """scores.csv: image, objects, jaccard, corloc (as before), maxFbeta, IoU, Acc, then refined_* columns."""
        fields = ["image", "objects", "jaccard", "corloc", "maxFbeta", "IoU", "Acc"]
        if "refined" in self.stages:
            fields += [f"refined_{k}" for k in BLOCK]
        return score_table(self.rows, fields)
