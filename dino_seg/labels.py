"""The one reader of label PNGs (masks, DAVIS annotations, DAVIS results), with explicit rules for void and 0/255."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

VOID_LABEL = 255
_INTEGER_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class LabelImage:
    """A label PNG as read: `labels` (H, W) object indices, `palette` whether it was an indexed PNG,
    `void` (H, W) bool the pixels of the void index (only palette PNGs carry void)."""

    labels: np.ndarray
    palette: bool
    void: np.ndarray


def read_label_png(path: str | Path, *, what: str = "label image", error: type[Exception] = ValueError,
                   binary_255: Literal["object", "keep"] = "object", accept: Literal["indices", "any"] = "indices",
                   void_label: int | None = VOID_LABEL) -> LabelImage:
    """Read a label PNG under explicit rules; any problem raises `error` with one line naming `path` and `what`.

    - Palette PNGs (DAVIS 2017, PASCAL VOC): the stored indices, 0 background, k object k; `void_label` (255)
      marks void pixels in `void` (the labels keep it as stored).
    - Single-channel integer PNGs (L, 1, I, I;16): the values; one holding only 0 and 255 (a DAVIS 2016 mask)
      becomes 0/1 with `binary_255="object"` and stays 0/255 with "keep". Such images carry no void.
    - `accept="indices"` (annotations, results) rejects colour and float images and values above 255, and
      returns uint8; `accept="any"` (binary masks) also reads float images as they are and colour images as
      0/1 (1 where any channel is non-zero).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P" or mode in _INTEGER_MODES or (accept == "any" and mode == "F"):
                arr = np.array(im)
            elif accept == "any":
                arr = np.array(im.convert("RGB")).any(axis=-1).astype(np.uint8)
            else:
                raise error(f"{what} {path} is a {mode} image: expected a palette or single-channel PNG of "
                            "object indices")
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, error):
            raise
        raise error(f"cannot read {what} {path}: {exc}") from None
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if mode == "P":
        void = arr == void_label if void_label is not None else np.zeros(arr.shape, bool)
        return LabelImage(arr.astype(np.uint8), True, void)
    if binary_255 == "object" and arr.size and np.isin(arr, (0, 255)).all() and (arr == 255).any():
        arr = (arr == 255).astype(np.uint8)  # DAVIS 2016: 255 is the object, not void
    if accept == "indices":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise error(f"{what} {path} holds values outside 0..255")
        arr = arr.astype(np.uint8)
    return LabelImage(arr, False, np.zeros(arr.shape, bool))
