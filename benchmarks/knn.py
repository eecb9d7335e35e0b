"""k-NN evaluation cost: images/s of feature extraction per model, and time and memory of the vote
as the training set grows, against a transcription of the reference's knn_classifier.

    python benchmarks/knn.py                                   # best device, defaults below
    python benchmarks/knn.py --device cpu --threads 2 --train_sizes 10000 30000 100000
    python benchmarks/knn.py --device cuda --batch_size 128 --train_sizes 100000 400000 1281167 --test_size 50000

Extraction: `dino_seg.knn.extract_features` on random 224x224 images (random weights: speed does not
depend on them), the fastest of --repeats passes, per model; data loading and decoding are not timed.

Vote: random L2-normalised features (N training x D, --test_size test images, 1000 classes), k =
--k. "reference" is eval_knn.py's knn_classifier (100 chunks of test images, a one-hot
(chunk * k, 1000) tensor); "ours" is `dino_seg.knn.knn_classifier` (chunks sized to a 256 MB
similarity block, per-class sums by scatter_add). Times: the fastest of --repeats, the two
interleaved. Memory: peak growth during one vote, each in a fresh process (CPU: the resident set
sampled every 0.5 ms; CUDA: max_memory_allocated), features excluded. The last rows extrapolate to ImageNet (1.28 M x 384
training features, 50 000 test images): time linearly in N x M from the largest measured size,
memory from each implementation's chunk rule.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path[:0] = [str(_HERE.parent), str(_HERE.parent / "tests")]  # this checkout's packages; the transcription

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from dino_seg.device import pick_device  # noqa: E402
from dino_seg.knn import DEFAULT_CHUNK_BYTES, REFERENCE_CLASSES, extract_features, knn_classifier  # noqa: E402
from dino_seg.models import build_backbone  # noqa: E402
from reference_knn import reference_knn_classifier  # noqa: E402

MODELS = ("vit_tiny/16", "vit_small/16", "vit_small/8", "vit_base/16", "resnet50")
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


def _unit_rows(n: int, dim: int, g: torch.Generator) -> torch.Tensor:
    # Filled block by block: no temporary as large as the result, so that a process's peak memory
    # before the vote is the features themselves (ru_maxrss cannot be reset).
    out = torch.empty(n, dim)
    for start in range(0, n, 4096):
        block = out[start: start + 4096]
        block.copy_(F.normalize(torch.randn(block.shape, generator=g), dim=1))
    return out


def features(n_train: int, n_test: int, dim: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    train, test = _unit_rows(n_train, dim, g).to(device), _unit_rows(n_test, dim, g).to(device)
    return (train, torch.randint(0, 1000, (n_train,), generator=g).to(device), test,
            torch.randint(0, 1000, (n_test,), generator=g).to(device))


def vote(impl: str, feats, k: int):
    if impl == "reference":
        return reference_knn_classifier(*feats, k, 0.07)
    return knn_classifier(*feats, k, 0.07, num_classes=1000)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(impl: str, n_train: int, n_test: int, dim: int, k: int, device_name: str) -> None:
    """Print the peak memory growth (MB) of one vote in this fresh process."""
    device = pick_device(device_name)
    feats = features(n_train, n_test, dim, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = vote(impl, feats, k)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        # ru_maxrss holds the peak of the imports too: sample the resident set during the vote instead.
        before, seen, done = _rss_mb(), [0.0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                seen[0] = max(seen[0], _rss_mb())
                time.sleep(0.0005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        result = vote(impl, feats, k)
        done.set()
        thread.join()
        peak = max(0.0, max(seen[0], _rss_mb()) - before)
    print(json.dumps({"peak_mb": peak, "result": result}))


def measure_memory(impl: str, n_train: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--_memory_child", impl, str(n_train), "--test_size", str(args.test_size),
           "--dim", str(args.dim), "--k", str(args.k), "--device", args.device, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


def bench_extraction(args: argparse.Namespace, device: torch.device) -> None:
    print(f"\n### Feature extraction ({args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"{args.images} images, device {device})\n")
    print("| model | images/s | time per image (ms) | vs vit_small/16 |\n|---|---:|---:|---:|")
    rows = {}
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 3, args.image_size, args.image_size, generator=g)
    dataset = TensorDataset(images, torch.zeros(args.images, dtype=torch.long))
    for name in args.models:
        arch, _, patch = name.partition("/")
        model = build_backbone(arch, int(patch or 16)).to(device).eval()
        extract_features(model, TensorDataset(images[:1], torch.zeros(1)), batch_size=1, device=device)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            extract_features(model, dataset, batch_size=args.batch_size, device=device)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        rows[name] = args.images / best
        del model
    base = rows.get("vit_small/16")
    for name, rate in rows.items():
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {name} | {rate:.1f} | {1000 / rate:.0f} | {ratio} |")
    if base:
        print(f"\nImageNet train + val ({IMAGENET_TRAIN + IMAGENET_VAL} images) with vit_small/16 at this rate: "
              f"{(IMAGENET_TRAIN + IMAGENET_VAL) / base / 3600:.1f} h on this device (one process).")


def bench_vote(args: argparse.Namespace, device: torch.device) -> None:
    print(f"\n### Vote (D {args.dim}, {args.test_size} test images, 1000 classes, k {args.k}, device {device})\n")
    print("| training features | reference (s) | ours (s) | speed-up | reference peak (MB) | ours peak (MB) | "
          "memory ratio |\n|---:|---:|---:|---:|---:|---:|---:|")
    last = None
    for n in args.train_sizes:
        feats = features(n, args.test_size, args.dim, device)
        best = {"reference": float("inf"), "ours": float("inf")}
        results = {}
        if n == args.train_sizes[0]:  # warm-up: first calls pay for allocator and kernel set-up
            for impl in ("reference", "ours"):
                vote(impl, features(1000, 200, args.dim, device), args.k)
        for _ in range(args.repeats):
            for impl in ("reference", "ours"):  # interleaved
                sync(device)
                t0 = time.perf_counter()
                results[impl] = vote(impl, feats, args.k)
                sync(device)
                best[impl] = min(best[impl], time.perf_counter() - t0)
        if results["reference"] != results["ours"]:
            raise SystemExit(f"the two votes disagree at N={n}: {results}")
        del feats
        mem = {impl: measure_memory(impl, n, args) for impl in ("reference", "ours")}
        print(f"| {n:,} | {best['reference']:.2f} | {best['ours']:.2f} | {best['reference'] / best['ours']:.2f}x | "
              f"{mem['reference']:.0f} | {mem['ours']:.0f} | {mem['reference'] / max(mem['ours'], 1e-9):.2f}x |")
        last = (n, best)
    if last is None:
        return
    n, best = last
    scale = (IMAGENET_TRAIN / n) * (IMAGENET_VAL / args.test_size)
    # Working memory at ImageNet scale from each chunk rule (float32): the reference's similarity block
    # (50 000 / 100 test images x N) plus its one-hot (chunk x k, 1000); ours a <= 256 MB block.
    ref_chunk = IMAGENET_VAL // 100
    ref_mb = (ref_chunk * IMAGENET_TRAIN + ref_chunk * args.k * REFERENCE_CLASSES) * 4 / 2**20
    our_chunk = max(1, DEFAULT_CHUNK_BYTES // (4 * IMAGENET_TRAIN))
    our_mb = (our_chunk * IMAGENET_TRAIN + our_chunk * REFERENCE_CLASSES) * 4 / 2**20
    feat_mb = IMAGENET_TRAIN * args.dim * 4 / 2**20
    print(f"| 1,281,167 x {IMAGENET_VAL:,} test (extrapolated) | {best['reference'] * scale:.0f} | "
          f"{best['ours'] * scale:.0f} | {best['reference'] / best['ours']:.2f}x | {ref_mb:.0f} | {our_mb:.0f} | "
          f"{ref_mb / our_mb:.1f}x |")
    print(f"\nAt ImageNet scale both also hold the {args.dim}-d training features ({feat_mb:.0f} MB); ours votes "
          f"{our_chunk} test images per chunk, the reference {ref_chunk}.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU.")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--images", type=int, default=8, help="Images per extraction pass.")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--train_sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    p.add_argument("--test_size", type=int, default=2000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip_extraction", action="store_true")
    p.add_argument("--_memory_child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory_child:
        memory_child(args._memory_child[0], int(args._memory_child[1]), args.test_size, args.dim, args.k, args.device)
        return 0
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if not args.skip_extraction:
        bench_extraction(args, device)
    bench_vote(args, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
