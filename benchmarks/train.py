"""Images/s and peak memory of one DINO training step (teacher forward, student forward and backward,
per-tensor clipping, AdamW, teacher EMA, centre update) per precision, with ratios against fp32.

    python benchmarks/train.py                                  # ViT-S/16, 2x224 + 8x96 crops, best device
    python benchmarks/train.py --device cpu --batch_size 4 --steps 3
    python benchmarks/train.py --device cuda --batch_size 64    # adds fp16 (GradScaler) on CUDA

On CPU the defaults (batch 2, one warm-up and one timed step) keep the run to a few minutes on two
cores: bf16 autocast is emulated on CPUs without AVX512-BF16 or AMX and runs several times slower
than fp32 there.

Each precision runs in its own process so that its peak memory is its own: on CUDA the peak of
allocated memory (torch.cuda.max_memory_allocated), on CPU the process's peak resident set size
(ru_maxrss: model, optimiser state and activations, plus about 0.3-0.5 GB of Python and libraries)
and its growth during the steps. The step is `train.engine.train_one_epoch` on pre-made random
crops: data loading and augmentation are not timed. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where `train` would name this file
# rather than the training package: drop that folder before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

from dino_seg.device import pick_device  # noqa: E402
from train.engine import Schedules, resolve_precision, train_one_epoch  # noqa: E402
from train.loss import DINOLoss  # noqa: E402
from train.main import build_student_teacher  # noqa: E402
from train.optim import build_optimizer, get_params_groups  # noqa: E402
from train.schedules import cosine_scheduler  # noqa: E402

PRECISIONS = {"fp32": dict(use_fp16=False, bf16=False), "bf16": dict(use_fp16=False, bf16=True),
              "fp16": dict(use_fp16=True, bf16=False)}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(*, precision: str, device_name: str, arch: str, patch_size: int, out_dim: int, batch_size: int,
            global_size: int, local_size: int, local_number: int, steps: int, warmup: int) -> dict:
    """Time `steps` training steps after `warmup` ones in this process; returns the figures."""
    device = pick_device(device_name)
    torch.manual_seed(0)
    prec = resolve_precision(device.type, **PRECISIONS[precision])
    if precision != "fp32" and prec.dtype is None:
        raise ValueError(f"{precision} is not available on {device.type}")
    student, teacher = build_student_teacher(arch=arch, patch_size=patch_size, drop_path_rate=0.1, out_dim=out_dim,
                                             use_bn_in_head=False, norm_last_layer=True)
    student, teacher = student.to(device), teacher.to(device)
    ncrops = 2 + local_number
    loss = DINOLoss(out_dim, ncrops, 0.04, 0.04, 0, 1).to(device)
    optimizer = build_optimizer("adamw", get_params_groups(student))
    scaler = torch.amp.GradScaler("cuda") if prec.use_scaler else None
    n = warmup + steps
    schedules = Schedules(lr=cosine_scheduler(5e-4, 1e-6, 1, n), wd=cosine_scheduler(0.04, 0.4, 1, n),
                          momentum=cosine_scheduler(0.996, 1.0, 1, n), niter_per_ep=n)
    crops = ([torch.randn(batch_size, 3, global_size, global_size) for _ in range(2)] +
             [torch.randn(batch_size, 3, local_size, local_size) for _ in range(local_number)])
    times: list[float] = []
    mark = [0.0]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def on_iteration(record: dict) -> None:  # the loss was already read back: the step is done
        sync()
        now = time.perf_counter()
        times.append(now - mark[0])
        mark[0] = now
        if len(times) == warmup:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

    rss_before = _rss_mb()
    sync()
    mark[0] = time.perf_counter()
    train_one_epoch(student=student, student_core=student, teacher=teacher, dino_loss=loss,
                    batches=[(crops, [])] * n, optimizer=optimizer, schedules=schedules, epoch=0, device=device,
                    precision=prec, scaler=scaler, clip_grad=3.0, freeze_last_layer=1, on_iteration=on_iteration)
    step_s = sum(times[warmup:]) / steps
    result = {"precision": precision, "device": str(device), "batch_size": batch_size, "steps": steps,
              "s_per_step": step_s, "images_per_s": batch_size / step_s}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["name"] = torch.cuda.get_device_name(device)
    else:
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["growth_mb"] = result["peak_mb"] - rss_before
        result["name"] = platform.processor() or platform.machine()
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--arch", default="vit_small")
    p.add_argument("--patch_size", default=16, type=int)
    p.add_argument("--out_dim", default=65536, type=int)
    p.add_argument("--batch_size", default=None, type=int, help="images per step (default 2 on CPU, 64 on GPU)")
    p.add_argument("--global_crops_size", default=224, type=int)
    p.add_argument("--local_crops_size", default=96, type=int)
    p.add_argument("--local_crops_number", default=8, type=int)
    p.add_argument("--steps", default=None, type=int, help="timed steps per precision (default 1 on CPU, 10 on GPU)")
    p.add_argument("--warmup", default=None, type=int, help="untimed steps first (default 1 on CPU, 3 on GPU)")
    p.add_argument("--precisions", default=None,
                   help="comma-separated among fp32, bf16, fp16 (default fp32,bf16 and fp16 on CUDA)")
    p.add_argument("--threads", default=0, type=int, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--single", default=None, choices=list(PRECISIONS),
                   help="measure one precision in this process and print its JSON (used by the table run)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (64 if gpu else 2)
    args.steps = args.steps or (10 if gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    common = dict(device_name=str(device), arch=args.arch, patch_size=args.patch_size, out_dim=args.out_dim,
                  batch_size=batch, global_size=args.global_crops_size, local_size=args.local_crops_size,
                  local_number=args.local_crops_number, steps=args.steps, warmup=args.warmup)
    if args.single:
        print(json.dumps(measure(precision=args.single, **common)))
        return 0
    precisions = (args.precisions.split(",") if args.precisions
                  else ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else []))
    rows = []
    for precision in precisions:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--single", precision, "--device", str(device),
               "--arch", args.arch, "--patch_size", str(args.patch_size), "--out_dim", str(args.out_dim),
               "--batch_size", str(batch), "--global_crops_size", str(args.global_crops_size),
               "--local_crops_size", str(args.local_crops_size), "--local_crops_number", str(args.local_crops_number),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        print(f"measuring {precision} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{precision}: failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not rows:
        return 1
    base = next((r for r in rows if r["precision"] == "fp32"), rows[0])
    crops = f"2x{args.global_crops_size} + {args.local_crops_number}x{args.local_crops_size}"
    print(f"DINO training step, {args.arch}/{args.patch_size}, out_dim {args.out_dim}, crops {crops}, "
          f"batch {batch}, {args.steps} timed steps after {args.warmup}, {rows[0]['name']} "
          f"({os.cpu_count()} CPUs visible, torch threads: {torch.get_num_threads()}), torch {torch.__version__}")
    mem = "peak alloc MB" if device.type == "cuda" else "peak RSS MB"
    header = f"| device | precision | s/step | images/s | speed vs fp32 | {mem} | memory vs fp32 |"
    if device.type != "cuda":
        header += " growth in steps MB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        line = (f"| {r['device']} | {r['precision']} | {r['s_per_step']:.2f} | {r['images_per_s']:.2f} | "
                f"{r['images_per_s'] / base['images_per_s']:.2f}x | {r['peak_mb']:.0f} | "
                f"{r['peak_mb'] / base['peak_mb']:.2f}x |")
        if "growth_mb" in r:
            line += f" {r['growth_mb']:.0f} |"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
