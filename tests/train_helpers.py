"""Shared helpers of the training tests: tiny image sets and the small flags every run uses."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SKIMAGE_NAMES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "horse",
                 "hubble_deep_field", "immunohistochemistry", "moon", "page", "rocket", "text", "cat")


def textured_images(folder: Path, n: int, size: int = 48, seed: int = 0, classes: int = 2) -> list[Path]:
    """`n` seeded textured RGB PNGs (smooth blobs plus stripes) in an ImageFolder-like tree."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        freq = rng.uniform(2, 8, size=3)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([np.sin(2 * np.pi * freq[c] * (xx * np.cos(phase[c]) + yy * np.sin(phase[c])) + phase[c])
                        for c in range(3)], axis=-1)
        img = (img + 1) / 2 * 200 + rng.uniform(0, 55, size=(size, size, 3))
        sub = folder / f"class{i % classes}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def skimage_images(folder: Path, size: int = 64) -> list[Path]:
    """scikit-image's bundled photographs and textures, resized to `size` px: a small real-looking set."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SKIMAGE_NAMES:
        arr = getattr(skimage.data, name)()
        image = Image.fromarray(arr).convert("RGB").resize((size, size), Image.BICUBIC)
        path = folder / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths


def tiny_args(data: Path, out: Path, **flags: object) -> list[str]:
    """Command line of a tiny run: vit_tiny/16, 32 px global and 16 px local crops, out_dim 64."""
    base: dict[str, object] = {
        "arch": "vit_tiny", "patch_size": 16, "out_dim": 64, "global_crops_size": 32, "local_crops_size": 16,
        "local_crops_number": 2, "batch_size_per_gpu": 4, "epochs": 1, "warmup_epochs": 0, "num_workers": 0,
        "device": "cpu", "data_path": data, "output_dir": out,
    }
    base.update(flags)
    argv: list[str] = []
    for key, value in base.items():
        argv.append(f"--{key}")
        argv.extend(str(v) for v in value) if isinstance(value, (list, tuple)) else argv.append(str(value))
    return argv


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with `n` intra-op threads: on a small shared machine, one thread avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cli(main, argv: list[str]) -> tuple[int, str, str]:
    """Call a command's `main(argv)` in-process with one thread: (exit code, stdout, stderr)."""
    import io

    out, err = io.StringIO(), io.StringIO()
    with torch_threads(1), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
