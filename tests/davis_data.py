"""Synthetic DAVIS-layout sequences for tests: moving shapes on a textured background, palette PNGs."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from dino_seg.viz import davis_palette


def shape_masks(t: int, height: int, width: int, n_objects: int) -> np.ndarray:
    """(H, W) uint8 labels at time t: object 1 a rectangle moving right, 2 a disc moving down, 3 a square."""
    labels = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    if n_objects >= 1:
        x0 = width // 8 + 3 * t
        labels[height // 8: height // 8 + height // 3, x0: x0 + width // 4] = 1
    if n_objects >= 2:
        cy, cx, rad = height // 3 + 2 * t, 2 * width // 3, min(height, width) // 6
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad ** 2] = 2
    if n_objects >= 3:
        y0, x0 = 2 * height // 3, width // 3 + 2 * t
        labels[y0: y0 + height // 5, x0: x0 + height // 5] = 3
    return labels


def render(labels: np.ndarray, t: int, seed: int = 0) -> np.ndarray:
    """An RGB frame: a fixed noisy texture with each object painted its own colour plus noise."""
    rng = np.random.default_rng(seed + t)
    height, width = labels.shape
    base = np.random.default_rng(seed).integers(60, 120, (height, width, 3)).astype(np.float64)
    colours = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 230)}
    img = base
    for k, colour in colours.items():
        img[labels == k] = colour
    img = img + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette(davis_palette().ravel().tolist())
    im.save(path)


def make_davis(root: Path, sequences: dict[str, int] | None = None, *, height: int = 64, width: int = 96,
               n_objects: int = 2, subset: str = "val", imageset: str | None = "2017", seed: int = 0) -> Path:
    """Write a tiny DAVIS root: JPEGImages/480p/<seq>/%05d.jpg, Annotations/480p/<seq>/%05d.png, ImageSets.

    `sequences` maps names to frame counts (default {"shapes": 5}); `imageset` "2017", "480p" (DAVIS 2016
    per-frame lines) or None (no list: sequences are the frame folders).
    """
    sequences = sequences or {"shapes": 5}
    for i, (name, n_frames) in enumerate(sequences.items()):
        for t in range(n_frames):
            labels = shape_masks(t, height, width, n_objects)
            frame = render(labels, t, seed + 100 * i)
            jpg = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(jpg), frame[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            save_palette_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", labels)
    if imageset == "2017":
        (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "2017" / f"{subset}.txt").write_text("".join(f"{n}\n" for n in sequences))
    elif imageset == "480p":
        lines = [f"/JPEGImages/480p/{n}/{t:05d}.jpg /Annotations/480p/{n}/{t:05d}.png\n"
                 for n, count in sequences.items() for t in range(count)]
        (root / "ImageSets" / "480p").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "480p" / f"{subset}.txt").write_text("".join(lines))
    return root
