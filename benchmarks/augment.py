"""Images/s per CPU core of the DINO multi-crop input pipeline (decode + 2 global + N local crops):
the reference PIL pipeline against the fast one, on video frames and on 12-megapixel photos.

    python benchmarks/augment.py                                     # generated frames and photos, ~3 min
    python benchmarks/augment.py --frames_dir /work/shared/data/davis-sample/JPEGImages/480p
    python benchmarks/augment.py --train                             # adds short data-bound `python -m train` runs

One thread: torch and OpenCV limited to one thread, images decoded and augmented in this process, the
two pipelines interleaved over the same files and the best of --repeats kept; "decode" is the share
of the time spent in `load` (the reference decodes the full image; the fast one decodes JPEGs at the
size the crops need). All cores: the training's DataLoader (`train.data.build_loader`) with one worker
per CPU, images/s over the whole machine divided by the cores. Photos are scikit-image pictures
upscaled to 4032x3024 with noise and saved as quality-90 JPEGs, so they decode like phone photos.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where `train` would name
# benchmarks/train.py rather than the training package: replace it by this checkout's root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from train.augment import AUGMENTATIONS, DataAugmentationDINO  # noqa: E402
from train.data import ImageFilesDataset, build_loader, find_images, seeded_rng  # noqa: E402

PICTURES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """`n` JPEGs of `size` (W, H) from scikit-image's pictures: upscaled, noise added (sigma 4), quality 90."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        name = PICTURES[k % len(PICTURES)]
        arr = np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size, Image.BICUBIC))
        noisy = arr.astype(np.float32) + rng.normal(0, 4, arr.shape).astype(np.float32)
        path = folder / f"{k:03d}_{name}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def one_thread(paths: list[Path], augs: dict[str, DataAugmentationDINO], repeats: int) -> dict[str, dict]:
    """Best-of-`repeats` seconds per image (decode, augment) for each pipeline, interleaved."""
    best = {name: {"total": np.inf} for name in augs}
    for _ in range(repeats):
        for name, aug in augs.items():
            decode = augment = 0.0
            for k, path in enumerate(paths):
                t0 = time.perf_counter()
                image = aug.load(path)
                t1 = time.perf_counter()
                with seeded_rng(k):
                    aug(image)
                t2 = time.perf_counter()
                decode += t1 - t0
                augment += t2 - t1
            total = (decode + augment) / len(paths)
            if total < best[name]["total"]:
                best[name] = {"total": total, "decode": decode / len(paths)}
    return best


def all_cores(root: Path, aug: DataAugmentationDINO, workers: int, batch: int) -> float:
    """Images/s of the training loader with `workers` processes over the images of `root`."""
    dataset = ImageFilesDataset(root, aug, seed=0)
    loader = build_loader(dataset, batch_size=batch, num_workers=workers, rank=0, world_size=1, seed=0)
    loader.sampler.set_epoch(0)
    t0 = time.perf_counter()
    n = sum(len(crops[0]) for crops, _ in loader)
    return n / (time.perf_counter() - t0)


def train_rate(data: Path, augmentation: str, flags: list[str]) -> float:
    """Iterations/s of a short `python -m train` run, read from its progress bar."""
    out = Path(tempfile.mkdtemp(prefix="bench_train_"))
    cmd = [sys.executable, "-m", "train", "--data_path", str(data), "--output_dir", str(out),
           "--augmentation", augmentation, *flags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=_HERE.parent)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m train failed: {proc.stderr.strip().splitlines()[-1:]}")
    rates = re.findall(r"(\d+\.\d+)(it/s|s/it)", proc.stderr)
    value, unit = rates[-1]  # the final bar of the last epoch: the epoch's mean rate
    return float(value) if unit == "it/s" else 1.0 / float(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames_dir", default=None, help="folder of 854x480 JPEG frames (searched recursively); "
                   "default: generated ones")
    p.add_argument("--frames", default=24, type=int, help="frames timed")
    p.add_argument("--photos", default=4, type=int, help="4032x3024 photos generated and timed")
    p.add_argument("--repeats", default=3, type=int, help="interleaved repeats, best kept")
    p.add_argument("--local_crops_number", default=8, type=int)
    p.add_argument("--workers", default=os.cpu_count(), type=int, help="loader workers for the all-cores rows")
    p.add_argument("--train", action="store_true", help="also time short data-bound vit_tiny training runs")
    p.add_argument("--train_only", action="store_true", help="only the training runs")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_augment_"))
    try:
        if args.frames_dir:
            frames = find_images(args.frames_dir)[: args.frames]
        else:
            frames = make_jpegs(tmp / "frames", args.frames, (854, 480))
        photos = make_jpegs(tmp / "photos", args.photos, (4032, 3024))
        sets = {"frames 854x480": frames, "photos 4032x3024": photos}
        augs = {name: DataAugmentationDINO(local_crops_number=args.local_crops_number, augmentation=name)
                for name in AUGMENTATIONS[::-1]}  # reference first

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        rows = []
        for label, paths in ([] if args.train_only else sets.items()):
            print(f"one thread: {label} ...", file=sys.stderr, flush=True)
            res = one_thread(paths, augs, args.repeats)
            base = 1.0 / res["reference"]["total"]
            for name, r in res.items():
                rows.append((label, name, "1 thread", 1.0 / r["total"], 1.0 / r["total"],
                             f"{100 * r['decode'] / r['total']:.0f}%", 1.0 / r["total"] / base))
        for label, paths in ([] if args.train_only else sets.items()):
            root = tmp / f"loader_{label.split()[0]}"
            root.mkdir()
            per_worker = 16 if label.startswith("frames") else 6  # several batches per worker
            for k in range(per_worker * args.workers):
                os.symlink(paths[k % len(paths)], root / f"{k:03d}.jpg")
            print(f"{args.workers} workers: {label} ...", file=sys.stderr, flush=True)
            rates = {}
            for _ in range(max(args.repeats - 1, 1)):
                for name, aug in augs.items():
                    rates[name] = max(rates.get(name, 0.0), all_cores(root, aug, args.workers, batch=4))
            for name, rate in rates.items():
                rows.append((label, name, f"{args.workers} workers", rate, rate / args.workers, "",
                             rate / rates["reference"]))

        if rows:
            print(f"DINO multi-crop input pipeline: 2x224 + {args.local_crops_number}x96 crops, "
                  f"{os.cpu_count()} CPUs visible, torch {torch.__version__}, OpenCV {cv2.__version__}, "
                  f"Pillow {Image.__version__}, best of {args.repeats}")
            print("| images | pipeline | threads | images/s | images/s per core | decode share | vs reference |")
            print("|---|---|---|---|---|---|---|")
            for label, name, threads, rate, per_core, decode, ratio in rows:
                print(f"| {label} | {name} | {threads} | {rate:.1f} | {per_core:.1f} | {decode} | {ratio:.2f}x |")

        if args.train or args.train_only:
            data = tmp / "train_photos"
            data.mkdir()
            for k in range(48):
                os.symlink(photos[k % len(photos)], data / f"{k:03d}.jpg")
            flags = ["--arch", "vit_tiny", "--out_dim", "1024", "--global_crops_size", "64", "--local_crops_size",
                     "32", "--local_crops_number", "8", "--batch_size_per_gpu", "8", "--epochs", "1",
                     "--warmup_epochs", "0", "--num_workers", "1", "--device", "cpu", "--saveckp_freq", "0"]
            print(f"\n`python -m train {' '.join(flags)}` on 48 photos 4032x3024 (6 iterations; "
                  "it/s: the epoch's mean from the progress bar, worker start included; best of "
                  f"{max(args.repeats - 1, 1)}):")
            print("| pipeline | it/s | images/s | vs reference |")
            print("|---|---|---|---|")
            its: dict[str, float] = {}
            for _ in range(max(args.repeats - 1, 1)):  # interleaved, best kept
                for name in augs:
                    print(f"training with {name} ...", file=sys.stderr, flush=True)
                    its[name] = max(its.get(name, 0.0), train_rate(data, name, flags))
            for name, rate in its.items():
                print(f"| {name} | {rate:.2f} | {8 * rate:.1f} | {rate / its['reference']:.2f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
