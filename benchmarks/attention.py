"""Milliseconds per image for last-layer [CLS] attention and masks, ours against the reference's path.

    python benchmarks/attention.py                 # ViT-S/16 and ViT-S/8 at 480x480, best device
    python benchmarks/attention.py --device cpu --repeats 3

"reference path" computes the last block's full (1+N) x (1+N) attention, as the reference's
get_last_selfattention does, then keeps the [CLS] row; "ours" computes only the [CLS] query row
(dino_seg.attention.cls_attention). Both include the 60% mass masks. Random weights: speed does
not depend on the values.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dino_seg.attention import cls_attention, last_selfattention, threshold_masks, upsample_masks
from dino_seg.device import pick_device
from dino_seg.models import build_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_path(model, x):
    attn = last_selfattention(model, x)  # (1, heads, 1+N, 1+N)
    p = model.patch_size
    maps = attn[0, :, 0, 1:].reshape(-1, x.shape[-2] // p, x.shape[-1] // p)
    return upsample_masks(threshold_masks(maps, 0.6), p)


def our_path(model, x):
    maps = cls_attention(model, x)[0]  # (heads, h, w)
    return upsample_masks(threshold_masks(maps, 0.6), model.patch_size)


def measure(fns, model, x, device, repeats: int) -> list[tuple[float, float]]:
    """(fastest ms per image, peak CUDA MiB or NaN) of each function.

    Calls are interleaved and the fastest kept, so that load from other processes on a shared
    machine does not favour whichever function runs first.
    """
    for fn in fns:
        fn(model, x)  # warm-up
    times = [[] for _ in fns]
    peaks = [float("nan")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            fn(model, x)
            _sync(device)
            times[i].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[i] = torch.cuda.max_memory_allocated() / 2**20
    return [(1000 * min(t), p) for t, p in zip(times, peaks)]


def _mib(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"  # NaN: not measured on this device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image_size", default=480, type=int)
    parser.add_argument("--repeats", default=5, type=int)
    parser.add_argument("--models", default="vit_small/16,vit_small/8")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({where}); torch {torch.__version__}; image {args.image_size}x{args.image_size}; "
          f"fastest of {args.repeats} interleaved calls")
    print(f"{'model':<14}{'path':<18}{'ms/img':>10}{'speed-up':>10}{'attn MiB':>10}{'peak MiB':>10}")
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.image_size, args.image_size, device=device)
    for spec in args.models.split(","):
        arch, patch = spec.split("/")
        model = build_backbone(arch, int(patch)).to(device).eval()
        with torch.no_grad():
            (ref_ms, ref_mem), (our_ms, our_mem) = measure([reference_path, our_path], model, x, device,
                                                           args.repeats)
        name = f"{arch}/{patch}"
        # Size of the last block's attention probabilities each path holds (float32).
        tokens = 1 + (args.image_size // int(patch)) ** 2
        ref_attn, our_attn = [model.num_heads * tokens * rows * 4 / 2**20 for rows in (tokens, 1)]
        print(f"{name:<14}{'reference (NxN)':<18}{ref_ms:>10.1f}{1.0:>9.2f}x{ref_attn:>10.2f}{_mib(ref_mem):>10}")
        print(f"{name:<14}{'ours ([CLS] row)':<18}{our_ms:>10.1f}{ref_ms / our_ms:>9.2f}x{our_attn:>10.2f}"
              f"{_mib(our_mem):>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
