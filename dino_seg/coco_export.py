"""Pseudo-labels in COCO format (CutLER-style): one JSON of images, RLE object masks, boxes and scores.

The RLE is written here directly, byte for byte as pycocotools' mask.encode writes it (column-major run
lengths starting with background, then its compressed string form), so writing needs no extra package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import save_text

CATEGORIES = [{"id": 1, "name": "object"}]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask (H, W) in column-major order, the first run being background (maybe 0)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # where a new run starts
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat[0] else counts


def rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString: each count (from the third on, minus the count two before) in 5-bit groups,
    least significant first, 0x20 flagging more groups, offset by 48 into printable ASCII."""
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a boolean mask (H, W): {"size": [H, W], "counts": str}."""
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_string(rle_counts(mask))}


@dataclass
class CocoExport:
    """Images and objects gathered one image at a time, then written as one COCO JSON."""

    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)

    def add_image(self, file_name: str, masks: np.ndarray, boxes: list[list[float]],
                  scores: list[float] | None = None) -> int:
        """One image (masks (objects, H, W) bool, boxes [x0, y0, x1, y1] original pixels); returns its id."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or len(masks) != len(boxes):
            raise ValueError(f"{file_name}: {len(masks)} masks of shape {masks.shape[1:]} for {len(boxes)} boxes")
        scores = [1.0] * len(boxes) if scores is None else scores
        if len(scores) != len(boxes):
            raise ValueError(f"{file_name}: {len(scores)} scores for {len(boxes)} boxes")
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": int(masks.shape[1]),
                            "width": int(masks.shape[2])})
        for mask, (x0, y0, x1, y1), score in zip(masks, boxes, scores):
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "segmentation": encode_rle(mask), "area": int(mask.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)})
        return image_id

    def to_dict(self) -> dict:
        return {"images": self.images, "annotations": self.annotations, "categories": CATEGORIES}

    def write(self, path: str | Path) -> Path:
        """Write the JSON atomically."""
        save_text(path, json.dumps(self.to_dict()) + "\n")
        return Path(path)
