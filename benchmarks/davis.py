"""Seconds per frame and peak memory of DAVIS label propagation at 480p: backbone and propagation, windowed
(ours: with the bfloat16 pre-pass where the CPU has bfloat16 instructions, and float32 only) against the plain
dense formula of the reference, for ViT-S/16 and ViT-S/8 (random weights).

    python benchmarks/davis.py                                   # synthetic 854x480 frames, CPU
    python benchmarks/davis.py --data_path /path/to/davis --sequence blackswan --n_frames 6
    python benchmarks/davis.py --device cuda --patch_sizes 16 8

Propagation is timed in the steady state (the first frame plus --n_last_frames contexts), windowed and dense
calls interleaved, --repeats each; times are the fastest call (the backbone: the fastest frame), peak memory
the largest rise during a call (CUDA allocator, or resident set size sampled every millisecond). "agreement" is the share of pixels where the final masks of a --n_frames run of both
implementations (each feeding its own predictions forward, as the reference does) are equal.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dino_seg.davis import first_frame_labels, frame_paths, read_annotation, read_frame, resized_shape  # noqa: E402
from dino_seg.device import pick_device  # noqa: E402
from dino_seg.models import build_backbone, patch_features  # noqa: E402
from dino_seg.propagation import (bf16_matmul_is_fast, dense_propagate_labels, neighborhood_mask,  # noqa: E402
                                  propagate_labels, soft_to_mask)


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or resident set size sampled every ms."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._rss()
            self._peak = self._base
            self._stop = threading.Event()

            def sample() -> None:
                while not self._stop.is_set():
                    self._peak = max(self._peak, self._rss())
                    time.sleep(0.001)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = (self._peak - self._base) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_frames(args: argparse.Namespace) -> tuple[list[torch.Tensor], np.ndarray, tuple[int, int]]:
    """(frames (3, H, W), first-frame annotation, original (H, W)): real DAVIS frames or synthetic ones."""
    if args.data_path:
        paths = frame_paths(args.data_path, args.sequence)[: args.n_frames]
        frames, sizes = zip(*[(f, (h, w)) for f, h, w in (read_frame(p) for p in paths)])
        ann = read_annotation(Path(args.data_path) / "Annotations" / "480p" / args.sequence / f"{paths[0].stem}.png")
        return list(frames), ann, sizes[0]
    g = torch.Generator().manual_seed(0)
    th, tw = resized_shape(args.height, args.width)
    base = torch.randn(3, th // 8, tw // 8, generator=g)
    frames = [torch.nn.functional.interpolate((base + 0.2 * torch.randn(base.shape, generator=g))[None],
                                              size=(th, tw), mode="bilinear")[0] for _ in range(args.n_frames)]
    ann = np.zeros((args.height, args.width), np.uint8)
    ann[args.height // 4: args.height // 2, args.width // 4: args.width // 2] = 1
    ann[args.height // 2: 3 * args.height // 4, args.width // 2: 3 * args.width // 4] = 2
    return frames, ann, (args.height, args.width)


def run_sequence(fn, feats: list[torch.Tensor], first: torch.Tensor, n_last: int, **kw) -> list[torch.Tensor]:
    """The reference's loop: the first frame plus the n_last previous soft predictions as context."""
    recent: deque = deque(maxlen=n_last)
    outs = []
    for feat in feats[1:]:
        ctx_f = torch.stack([feats[0]] + [f for f, _ in recent])
        ctx_l = torch.stack([first] + [s for _, s in recent])
        soft = fn(ctx_f, ctx_l, feat, **kw)
        recent.append((feat, soft))
        outs.append(soft)
    return outs


def time_once(fn, device: torch.device) -> tuple[float, float, object]:
    """(wall seconds, peak MiB, result) of one call."""
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, mem.peak_mb, out


def bench_patch(args: argparse.Namespace, patch: int, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model = build_backbone(args.arch, patch).eval().to(device)
    frames, ann, ori_hw = load_frames(args)
    th, tw = frames[0].shape[1:]
    h, w = th // patch, tw // patch
    rows = []
    with torch.no_grad():
        patch_features(model, frames[0][None, :, :64, :64].to(device))  # warm-up
        feats = []

        def backbone() -> torch.Tensor:
            return patch_features(model, frames[len(feats)][None].to(device))[0]

        bb_times, bb_peak = [], 0.0
        for _ in frames:
            seconds, peak, feat = time_once(backbone, device)
            feats.append(feat)
            bb_times.append(seconds)
            bb_peak = max(bb_peak, peak)
        rows.append(dict(patch=patch, stage="backbone", impl="-", s=min(bb_times), mb=bb_peak))

        labels = first_frame_labels(ann, (th, tw), patch).to(device)
        kw = dict(topk=args.topk, radius=args.size_mask_neighborhood)
        n_ctx = 1 + args.n_last_frames
        # Steady-state contexts built from the available frames, cycled; soft labels from a windowed run.
        softs = run_sequence(propagate_labels, feats, labels, args.n_last_frames, **kw)
        ring = [(feats[0], labels)] + list(zip(feats[1:], softs))
        ctx = [ring[i % len(ring)] for i in range(n_ctx)]
        ctx_f = torch.stack([f for f, _ in ctx])
        ctx_l = torch.stack([s for _, s in ctx])
        target = feats[-1]
        windowed = lambda: propagate_labels(ctx_f, ctx_l, target, **kw)  # noqa: E731
        fp32_only = lambda: propagate_labels(ctx_f, ctx_l, target, prefilter=False, **kw)  # noqa: E731
        prefiltered = bf16_matmul_is_fast(device)
        dense_bytes = 4 * n_ctx * (h * w) ** 2 * 3  # affinity, its transposed copy, the comparison mask
        if dense_bytes / 2**30 > args.dense_max_gb:
            timed = [time_once(windowed, device) for _ in range(args.repeats)]
            rows.append(dict(patch=patch, stage="propagation", impl="windowed", s=min(t[0] for t in timed),
                             mb=max(t[1] for t in timed)))
            rows.append(dict(patch=patch, stage="propagation", impl="dense", s=float("nan"), mb=float("nan"),
                             note=f"skipped: needs ~{dense_bytes / 2**30:.1f} GiB > --dense_max_gb"))
            return rows
        mask = neighborhood_mask(h, w, args.size_mask_neighborhood, device)  # cached, as the reference does
        dense = lambda: dense_propagate_labels(ctx_f, ctx_l, target, mask=mask, **kw)  # noqa: E731
        # Interleaved, and the fastest call of each kept: load from other processes only slows calls down.
        timed_w, timed_f, timed_d = [], [], []
        for _ in range(args.repeats):
            timed_w.append(time_once(windowed, device))
            if prefiltered:
                timed_f.append(time_once(fp32_only, device))
            timed_d.append(time_once(dense, device))
        out_w, out_d = timed_w[-1][2], timed_d[-1][2]
        rows.append(dict(patch=patch, stage="propagation", impl="windowed", s=min(t[0] for t in timed_w),
                         mb=max(t[1] for t in timed_w),
                         note="bfloat16 pre-pass" if prefiltered else "float32 (no bfloat16 pre-pass here)"))
        if prefiltered:
            diff_f = (timed_f[-1][2] - out_w).abs().max().item()
            rows.append(dict(patch=patch, stage="propagation", impl="fp32 win", s=min(t[0] for t in timed_f),
                             mb=max(t[1] for t in timed_f), note=f"prefilter=False; max |diff| {diff_f:.1e}"))
        sec_d, mb_d = min(t[0] for t in timed_d), max(t[1] for t in timed_d)
        diff = (out_w - out_d).abs().max().item()
        dense_softs = run_sequence(lambda a, b, c, **k: dense_propagate_labels(a, b, c, mask=mask, **k),
                                   feats, labels, args.n_last_frames, **kw)
        same = [np.mean(soft_to_mask(a, patch, ori_hw) == soft_to_mask(b, patch, ori_hw))
                for a, b in zip(softs, dense_softs)]
        rows.append(dict(patch=patch, stage="propagation", impl="dense", s=sec_d, mb=mb_d,
                         note=f"max |diff| {diff:.1e}, masks agree on {100 * min(same):.3f}% of pixels (worst frame)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("benchmarks/davis.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="vit_small", choices=("vit_tiny", "vit_small", "vit_base"))
    parser.add_argument("--patch_sizes", default=[16, 8], type=int, nargs="+")
    parser.add_argument("--data_path", default="", help="A DAVIS root for real frames (default: synthetic).")
    parser.add_argument("--sequence", default="blackswan")
    parser.add_argument("--height", default=480, type=int, help="Synthetic frame height (original size).")
    parser.add_argument("--width", default=854, type=int, help="Synthetic frame width (original size).")
    parser.add_argument("--n_frames", default=3, type=int, help="Frames through the backbone and the run.")
    parser.add_argument("--repeats", default=3, type=int, help="Timed propagation calls per implementation.")
    parser.add_argument("--n_last_frames", default=7, type=int)
    parser.add_argument("--size_mask_neighborhood", default=12, type=int)
    parser.add_argument("--topk", default=5, type=int)
    parser.add_argument("--dense_max_gb", default=6.0, type=float, help="Skip the dense baseline above this.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps.")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if args.n_frames < 2:
        parser.error("--n_frames: at least 2")

    rows = []
    for patch in args.patch_sizes:
        rows += bench_patch(args, patch, device)
        print(f"patch {patch} done", file=sys.stderr)

    cpu = f"{os.cpu_count()} CPU cores" if device.type == "cpu" else torch.cuda.get_device_name(device)
    th, tw = resized_shape(args.height, args.width) if not args.data_path else (480, 832)
    print(f"\n{args.arch}, input {tw}x{th}, {1 + args.n_last_frames} contexts, radius "
          f"{args.size_mask_neighborhood}, top-{args.topk}, device {device} ({cpu}), torch {torch.__version__}")
    print(f"{'model':<12}{'stage':<13}{'impl':<10}{'s/frame':>9}{'peak MiB':>10}{'vs ours':>14}  note")
    for patch in args.patch_sizes:
        mine = [r for r in rows if r["patch"] == patch]
        win = next(r for r in mine if r["impl"] == "windowed")
        for r in mine:
            ratio = ""
            if r["impl"] in ("dense", "fp32 win") and r["s"] == r["s"]:
                ratio = f"{r['s'] / win['s']:.1f}x / {r['mb'] / max(win['mb'], 1e-9):.1f}x"
            print(f"{args.arch[4:] + '/' + str(patch):<12}{r['stage']:<13}{r['impl']:<10}{r['s']:>9.3f}"
                  f"{r['mb']:>10.0f}{ratio:>14}  {r.get('note', '')}")
        bb = next(r for r in mine if r["stage"] == "backbone")
        dense = next(r for r in mine if r["impl"] == "dense")
        total = f"{bb['s'] + win['s']:.3f} s/frame ours"
        if dense["s"] == dense["s"]:
            total += f", {bb['s'] + dense['s']:.3f} dense"
        print(f"{'':<12}{'total':<13}{'':<10}{total}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
