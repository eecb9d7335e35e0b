"""Object discovery cost against the backbone's: per method, dense (the references' scipy eigh) vs iterative.

    python benchmarks/discover.py                      # ViT-S/16 and ViT-S/8 at 480 x 640
    python benchmarks/discover.py --huge               # also a 4032 x 3024 photo under the patch cap

Random weights: only the graph sizes matter for speed (the graph density of random keys on a real
photo is ~70%, comparable to trained ones). "dense" is the references' path (dense N x N graph,
scipy.linalg.eigh(subset_by_index=[1, 2])); "iterative" is dino_seg.ncut's Lanczos on the rank-one plus
sparse operator; "auto" is what the library picks. The backbone and every discovery call are interleaved
in each of --repeats rounds and the fastest of each is kept (the ratios stay fair on a loaded machine); peak memory is the largest resident-set growth during the call (sampled every 2 ms).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from dino_seg.discovery import discover, extract_features
from dino_seg.models import build_backbone

IMAGE = Path(__file__).resolve().parent.parent / "assets" / "images" / "blackswan.jpg"
PAGE = 4096


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Largest resident-set growth above the level at entry, sampled in a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn):
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return seconds, mem.grown_mb, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vit_small/16", "vit_small/8"])
    parser.add_argument("--size", nargs=2, type=int, default=[480, 640], help="H W the photo is resized to.")
    parser.add_argument("--methods", nargs="+", default=["attention", "lost", "tokencut", "maskcut"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense_max_patches", type=int, default=1500,
                        help="Skip the dense solve above this many patches (it is O(N^3)).")
    parser.add_argument("--huge", action="store_true", help="Also a 4032 x 3024 photo (capped at 10,000 patches).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    photo = Image.open(IMAGE).convert("RGB")
    image = photo.resize((args.size[1], args.size[0]))

    print("| model | input | patches | backbone s | backbone MB | method | solver | discovery s "
          "| % of backbone | discovery MB | iterative speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    cases = [(name, image, False) for name in args.models]
    if args.huge:
        cases.append((args.models[0], photo.resize((4032, 3024)), True))
    for name, img, huge in cases:
        arch, patch = name.split("/")
        torch.manual_seed(0)
        model = build_backbone(arch, int(patch)).eval()
        n, label = None, ""
        rows = [(m, s) for m in args.methods for s in (["auto"] if m in ("attention", "lost") else ["iterative", "dense"])]
        best: dict = {}
        backbone, backbone_mb = float("inf"), 0.0
        for _ in range(1 if huge else args.repeats):  # backbone and every method interleaved, fastest kept
            seconds, mb, feats = timed(lambda: extract_features(model, img))
            backbone, backbone_mb = min(backbone, seconds), max(backbone_mb, mb)
            n = feats.grid[0] * feats.grid[1]
            label = f"{img.width}x{img.height}" + (" (capped)" if feats.note else "")
            for method, solver in rows:
                if solver == "dense" and (n > args.dense_max_patches or huge):
                    continue
                seconds, mb, _ = timed(lambda: discover(feats, method, solver=solver))
                old = best.get((method, solver), (float("inf"), 0.0))
                best[(method, solver)] = (min(old[0], seconds), max(old[1], mb))
        for (method, solver), (seconds, mb) in best.items():
            dense = best.get((method, "dense"))
            speedup = f"{dense[0] / seconds:.1f}x" if solver == "iterative" and dense else ""
            print(f"| {name} | {label} | {n} | {backbone:.2f} | {backbone_mb:.0f} | {method} | {solver} "
                  f"| {seconds:.3f} | {100 * seconds / backbone:.1f}% | {mb:.0f} | {speedup} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
