"""Atomic file writes: a result is either complete on disk or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


class AtomicFile:
    """A temporary file beside `path` (same suffix, hidden name) that replaces `path` in one rename on
    `commit`, or disappears on `discard`: for writers that stay open across calls (video streams)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder, so the rename never crosses file systems; same suffix, so writers that pick the
        # format from the name (OpenCV, PIL, matplotlib) write the right one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=self.path.suffix)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        if self.tmp.exists():
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    target = AtomicFile(path)
    try:
        yield target.tmp
        target.commit()
    finally:
        target.discard()


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
