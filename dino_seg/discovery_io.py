"""Writing one image's discovered objects: masks, patches, scores and boxes as files, and their pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .discovery import DiscoveryFeatures, DiscoveryResult, patches_to_pixels
from .files import save_npy, save_png, save_text
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
    save_text(paths["boxes.json"], json.dumps([[round(v, 2) for v in b] for b in result.boxes]) + "\n")
    pixel_scores = patches_to_pixels(result.scores[None], features)[0]  # (H, W)
    objects, heat = discovery_panels(image, result.masks, result.boxes, pixel_scores)
    save_png(paths["objects.png"], objects)
    save_png(paths["scores.png"], heat)
    return list(paths.values())
