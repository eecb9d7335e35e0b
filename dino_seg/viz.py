"""Colours, heat maps, mask overlays and contours, shared by the evaluations and the app."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from matplotlib import colormaps


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    # The PASCAL VOC colour map, which DAVIS uses for its palette PNGs: the bits of the
    # label index are spread over the high bits of R, G and B. Built here, never downloaded.
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(256):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[label] = (r, g, b)
    palette.setflags(write=False)
    return palette


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map as a (256, 3) uint8 array (index 1 is (128, 0, 0))."""
    return _palette().copy()


def label_color(label: int) -> tuple[int, int, int]:
    """The palette colour of one label index."""
    r, g, b = _palette()[int(label) % 256]
    return int(r), int(g), int(b)


def heatmap(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """Map a 2-D float array to an RGB uint8 image, min-max scaled (as plt.imsave does)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return (colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    canvas = np.zeros(mask.shape, dtype=np.uint8)
    cv2.drawContours(canvas, contours, -1, 1, thickness)
    return canvas.astype(bool)


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 0, 0),
    alpha: float = 0.5,
    contour: bool = True,
) -> np.ndarray:
    """Blend `color` into the pixels of `image` (H, W, 3 uint8) where `mask` (H, W) is true, with its outline."""
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"mask of shape {mask.shape} does not match image of shape {image.shape[:2]}")
    out = image.astype(np.float32).copy()
    col = np.asarray(color, dtype=np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * col
    if contour and mask.any():
        out[_contour(mask, max(1, round(min(mask.shape) / 240)))] = col
    return out.round().clip(0, 255).astype(np.uint8)


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Overlay a label map (H, W ints; 0 = background, 255 = void, left as is) in palette colours."""
    labels = np.asarray(labels)
    out = np.asarray(image, dtype=np.uint8)
    for label in np.unique(labels):
        if label in (0, 255):
            continue
        out = overlay_mask(out, labels == label, label_color(int(label)), alpha=alpha, contour=contour)
    return out


def attention_panels(image: np.ndarray, pixel_maps: np.ndarray,
                     masks: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Heat maps of attention maps (heads, H, W) and overlays of masks (heads, then any extra such as the
    mean map's) on `image`, mask j in palette colour j + 1: one colour rule for the CLI and the app."""
    heat = [heatmap(m) for m in pixel_maps]
    overlays = [overlay_mask(image, m, label_color(j + 1)) for j, m in enumerate(masks)]
    return heat, overlays


def draw_box(image: np.ndarray, box: list[float], color: tuple[int, int, int]) -> np.ndarray:
    """Draw an [x0, y0, x1, y1] box (exclusive ends) on a copy of `image`."""
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    thickness = max(1, round(min(out.shape[:2]) / 200))
    x0, y0 = int(round(box[0])), int(round(box[1]))
    x1, y1 = max(x0, int(round(box[2])) - 1), max(y0, int(round(box[3])) - 1)
    cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(c) for c in color), thickness)
    return out


def discovery_panels(image: np.ndarray, masks: np.ndarray, boxes: list[list[float]],
                     pixel_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(objects overlay, score-map heat map) for discovered objects on `image` (H, W, 3): object j's mask
    and box in palette colour j + 1; `pixel_scores` is the score map at the image size (H, W)."""
    out = np.asarray(image, dtype=np.uint8)
    for j, (mask, box) in enumerate(zip(masks, boxes)):
        out = draw_box(overlay_mask(out, mask, label_color(j + 1)), box, label_color(j + 1))
    return out, heatmap(pixel_scores)
