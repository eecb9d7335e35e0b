"""Pixel-accurate object masks: each discovered mask refined as TokenCut's get_saliency.py does (bilateral.py's
solver), the boxes recomputed from the refined masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bilateral import MAX_GRID_PIXELS, bilateral_solver_output
from .masks import mask_extent


@dataclass
class RefinedObjects:
    """The refinement of one image's objects."""

    soft: np.ndarray  # (H, W) float32: the solver's soft output, the objects' maximum (zeros without objects)
    masks: np.ndarray  # (objects, H, W) bool: the refined mask, or the coarse one where the refinement was marked
    boxes: list[list[float]]  # [x0, y0, x1, y1] of `masks`, original pixels
    accepted: list[bool]  # False where get_saliency.py marks the refinement (IoU with the coarse mask < 0.5)
    ious: list[float]  # IoU of each refinement with its coarse mask


def refine_objects(image: np.ndarray, masks: np.ndarray, max_pixels: int | None = MAX_GRID_PIXELS) -> RefinedObjects:
    """Refine each coarse object mask (objects, H, W) guided by the RGB image (H, W, 3) uint8.

    get_saliency.py marks a refinement whose IoU with the coarse mask is under 0.5 (it negates it, so it is
    drawn as no mask) but still scores its soft output; here such an object keeps its coarse mask and box,
    and `accepted` records the mark. An empty refinement counts as IoU 0 (TokenCut falls back to the whole
    image, which the same check then marks).
    """
    masks = np.asarray(masks, dtype=bool)
    h, w = masks.shape[1:] if masks.ndim == 3 else image.shape[:2]
    soft = np.zeros((h, w), dtype=np.float32)
    out, accepted, ious = [], [], []
    for coarse in masks:
        r = bilateral_solver_output(image, coarse, max_pixels)
        soft = np.maximum(soft, r.soft.astype(np.float32)) if out else r.soft.astype(np.float32)
        out.append(r.mask if r.accepted else coarse)
        accepted.append(r.accepted)
        ious.append(r.iou)
    refined = np.stack(out) if out else np.zeros((0, h, w), dtype=bool)
    return RefinedObjects(soft, refined, [mask_extent(m) for m in refined], accepted, ious)


def refine_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One mask (H, W) refined: TokenCut's solve, > 0.5, holes filled, largest component; the coarse mask
    when the refinement is marked (IoU < 0.5) or the mask is empty."""
    mask = np.asarray(mask, dtype=bool)
    return refine_objects(image, mask[None]).masks[0] if mask.any() else mask


def refine_masks(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`refine_mask` for each object mask (objects, H, W) of one image."""
    masks = np.asarray(masks, dtype=bool)
    return np.stack([refine_mask(image, m) for m in masks]) if len(masks) else masks
