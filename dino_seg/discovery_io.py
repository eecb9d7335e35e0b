"""One image's discovered objects as files (masks, patches, scores, boxes, objects.json, the refinement, pictures),
and read back from them (scoring, export and --resume work from the files)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .discovery import DiscoveryFeatures, DiscoveryResult, patches_to_pixels
from .files import save_npy, save_png, save_text
from .refine import RefinedObjects
from .viz import discovery_panels

FILES = ("patches.npy", "masks.npy", "scores.npy", "boxes.json", "objects.png", "scores.png")


def write_discovery(out_dir: str | Path, image: np.ndarray, features: DiscoveryFeatures,
                    result: DiscoveryResult) -> list[Path]:
    """Write patches.npy, masks.npy, scores.npy, boxes.json, objects.png and scores.png for one image (RGB uint8)."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in FILES}
    save_npy(paths["patches.npy"], result.patches.astype(bool))
    save_npy(paths["masks.npy"], result.masks.astype(bool))
    save_npy(paths["scores.npy"], result.scores.astype(np.float32))
    save_text(paths["boxes.json"], json.dumps(rounded_boxes(result.boxes)) + "\n")
    pixel_scores = patches_to_pixels(result.scores[None], features)[0]  # (H, W)
    objects, heat = discovery_panels(image, result.masks, result.boxes, pixel_scores)
    save_png(paths["objects.png"], objects)
    save_png(paths["scores.png"], heat)
    return list(paths.values())


def rounded_boxes(boxes: list[list[float]]) -> list[list[float]]:
    """Boxes as boxes.json stores them (2 decimals), so other outputs can match it exactly."""
    return [[round(v, 2) for v in b] for b in boxes]


def write_objects(out_dir: str | Path, result: DiscoveryResult, refined: RefinedObjects | None = None) -> Path:
    """objects.json beside boxes.json: {"objects": [...] in boxes.json's order, "stop_score": ...}.

    Each object has its box (as boxes.json), `score` (1 - Ncut, objectness.py; null when not computed) and
    pixel `area`; with a refinement (refine.RefinedObjects) also `refined_box`, `refined_area`, `refine_iou`
    and `refined` (false where get_saliency.py marks the refinement, which then keeps the coarse mask).
    `stop_score`: with --n_objects auto, the score of the first cut refused as no object (null otherwise)."""
    scores = result.object_scores or [None] * len(result.boxes)
    objects = []
    for i, (box, score) in enumerate(zip(rounded_boxes(result.boxes), scores)):
        obj = {"box": box, "score": None if score is None else round(score, 4), "area": int(result.masks[i].sum())}
        if refined is not None:
            obj.update({"refined_box": rounded_boxes([refined.boxes[i]])[0],
                        "refined_area": int(refined.masks[i].sum()), "refine_iou": round(refined.ious[i], 4),
                        "refined": bool(refined.accepted[i])})
        objects.append(obj)
    stop = None if result.stop_score is None else round(result.stop_score, 4)
    path = Path(out_dir) / "objects.json"
    save_text(path, json.dumps({"objects": objects, "stop_score": stop}) + "\n")
    return path


def write_refinement(out_dir: str | Path, refined: RefinedObjects) -> list[Path]:
    """refined.npy (float32 (H, W), the solver's soft output), refined.png (0/255, the refined objects) and
    refined_masks.npy (bool, objects x H x W, each object's refined mask, or its coarse one where refused)."""
    out_dir = Path(out_dir)
    save_npy(out_dir / "refined.npy", refined.soft.astype(np.float32))
    save_npy(out_dir / "refined_masks.npy", refined.masks.astype(bool))
    union = refined.masks.any(axis=0) if len(refined.masks) else np.zeros(refined.soft.shape, dtype=bool)
    save_png(out_dir / "refined.png", union.astype(np.uint8) * 255)
    return [out_dir / "refined.npy", out_dir / "refined_masks.npy", out_dir / "refined.png"]


@dataclass
class SavedObjects:
    """One image's objects as read back from its output folder."""

    masks: np.ndarray  # (objects, H, W) bool, masks.npy
    boxes: list[list[float]]  # boxes.json
    scores: list[float | None]  # objects.json
    refined: RefinedObjects | None  # from refined.npy, refined_masks.npy and objects.json


def is_complete(out_dir: str | Path, refine: bool = False) -> bool:
    """Whether an image's outputs are all written: objects.json comes last (with the refinement's fields when
    `refine`), every file is written whole."""
    path = Path(out_dir) / "objects.json"
    if not path.is_file() or not (Path(out_dir) / "masks.npy").is_file():
        return False
    if not refine:
        return True
    try:
        objects = json.loads(path.read_text())["objects"]
    except (ValueError, KeyError, OSError):
        return False
    return (Path(out_dir) / "refined_masks.npy").is_file() and all("refined_box" in o for o in objects)


def read_objects(out_dir: str | Path, refine: bool = False) -> SavedObjects:
    """An image's objects from the files `write_discovery`, `write_refinement` and `write_objects` wrote."""
    out_dir = Path(out_dir)
    objects = json.loads((out_dir / "objects.json").read_text())["objects"]
    masks = np.load(out_dir / "masks.npy")
    refined = None
    if refine:
        refined = RefinedObjects(np.load(out_dir / "refined.npy"), np.load(out_dir / "refined_masks.npy"),
                                 [o["refined_box"] for o in objects], [o["refined"] for o in objects],
                                 [o["refine_iou"] for o in objects])
    return SavedObjects(masks, json.loads((out_dir / "boxes.json").read_text()), [o["score"] for o in objects],
                        refined)
