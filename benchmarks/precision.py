"""`--precision` bf16 / fp16 against fp32: backbone speed, [CLS] attention drift, mask and propagation agreement.

    python benchmarks/precision.py                     # CPU: fp32 and bf16 (where the CPU has bfloat16)
    python benchmarks/precision.py --device cuda       # GPU: fp32, bf16 and fp16

ViT-S/16 with random weights (speed does not depend on the values; drift does a little: trained weights have
sharper attention). Per precision: the fastest of --repeats backbone passes on a batch of --batch images of
--size x --size; the largest and mean absolute difference of the last block's [CLS] attention from fp32; the
share of pixels where the 60% attention masks (every head) agree with fp32's; and the share of pixels where
DAVIS-style propagated masks (synthetic frames, 8 contexts, patch features from that precision) agree.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dino_seg.attention import cls_attention, threshold_masks  # noqa: E402
from dino_seg.davis import first_frame_labels  # noqa: E402
from dino_seg.device import pick_device  # noqa: E402
from dino_seg.models import build_backbone, patch_features  # noqa: E402
from dino_seg.precision import PRECISIONS, PrecisionError, autocast, check_precision  # noqa: E402
from dino_seg.propagation import propagate_labels, soft_to_mask  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fastest(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def propagated_masks(model, frames: torch.Tensor, ann: np.ndarray, precision: str, device) -> list[np.ndarray]:
    with torch.no_grad(), autocast(precision, device):
        feats = patch_features(model, frames.to(device)).float()  # (T, h, w, D)
    labels = first_frame_labels(ann, tuple(frames.shape[-2:]), model.patch_size).to(device)
    recent: deque = deque(maxlen=7)
    masks = []
    for feat in feats[1:]:
        soft = propagate_labels(torch.stack([feats[0]] + [f for f, _ in recent]),
                                torch.stack([labels] + [s for _, s in recent]), feat)
        recent.append((feat, soft))
        masks.append(soft_to_mask(soft, model.patch_size, ann.shape))
    return masks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("benchmarks/precision.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default=480, type=int)
    parser.add_argument("--batch", default=2, type=int)
    parser.add_argument("--repeats", default=3, type=int)
    parser.add_argument("--n_frames", default=4, type=int, help="Synthetic frames propagated (first included).")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    model = build_backbone("vit_small", 16).eval().requires_grad_(False).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    # Frames: one smooth random image with a little noise per frame, so propagation has something to follow.
    base = torch.nn.functional.interpolate(torch.randn(1, 3, 30, 52, generator=gen), size=(480, 832), mode="bilinear")
    frames = base + 0.2 * torch.randn(args.n_frames, 3, 480, 832, generator=gen)
    ann = np.zeros((480, 832), np.uint8)
    ann[120:240, 200:420] = 1
    ann[260:400, 450:700] = 2

    rows, ref = [], {}
    for precision in PRECISIONS:
        try:
            check_precision(precision, device)
        except PrecisionError as err:
            rows.append((precision, None, str(err)))
            continue

        def forward() -> torch.Tensor:
            with torch.no_grad(), autocast(precision, device):
                return model.forward_features(x)

        seconds = fastest(forward, device, args.repeats)
        with torch.no_grad(), autocast(precision, device):
            attn = cls_attention(model, x).float()  # (B, heads, h, w)
        masks = threshold_masks(attn, 0.6)
        prop = propagated_masks(model, frames, ann, precision, device)
        if precision == "fp32":
            ref = {"seconds": seconds, "attn": attn, "masks": masks, "prop": prop}
        diff = (attn - ref["attn"]).abs()
        rows.append((precision, {
            "seconds": seconds, "speedup": ref["seconds"] / seconds, "attn_max": diff.max().item(),
            "attn_mean": diff.mean().item(), "mask_agree": (masks == ref["masks"]).float().mean().item(),
            "prop_agree": float(np.mean([np.mean(a == b) for a, b in zip(prop, ref["prop"])])),
        }, ""))

    where = f"{os.cpu_count()} CPU cores" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\nvit_small/16 (random weights), batch {args.batch} of {args.size}x{args.size}, {device} ({where}), "
          f"torch {torch.__version__}")
    print(f"{'precision':<10}{'s/batch':>9}{'vs fp32':>9}{'attn max diff':>15}{'attn mean diff':>16}"
          f"{'masks agree':>13}{'propagation agrees':>20}")
    for precision, r, note in rows:
        if r is None:
            print(f"{precision:<10}  refused: {note}")
            continue
        print(f"{precision:<10}{r['seconds']:>9.3f}{r['speedup']:>8.2f}x{r['attn_max']:>15.1e}{r['attn_mean']:>16.1e}"
              f"{100 * r['mask_agree']:>12.2f}%{100 * r['prop_agree']:>19.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
