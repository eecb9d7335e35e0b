"""Atomic file writes: a result is either complete on disk or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a uint8 array as PNG (RGB, grayscale, or indexed with `palette` (256, 3))."""
    array = np.ascontiguousarray(array)
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ValueError(f"{path}: an indexed PNG needs a 2-D uint8 label array, got {array.dtype} {array.shape}")
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        img.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    else:
        img = Image.fromarray(array)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a NumPy array as .npy."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_text(path: str | Path, text: str) -> None:
    """Write a text file (CSV, JSON)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
