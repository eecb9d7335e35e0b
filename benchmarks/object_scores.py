"""What the object scores (objects.json's 1 - Ncut, dino_seg/objectness.py) add to a TokenCut cut.

    python benchmarks/object_scores.py

Random features (D = 384, ViT-S) with a shared component, so the graph is about as dense as real keys; grids of
ViT-S/16 at 480 x 640 (1,200 patches) and 960 x 1,280 (4,800). The score needs one more pass over the graph's
rows (an N x N x D product in chunks); the fastest of --repeats runs is kept.
"""

from __future__ import annotations

import argparse
import time

import torch

from dino_seg.discovery import tokencut_object
from dino_seg.objectness import object_ncuts


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| patches | TokenCut s | score s | score / TokenCut |\n|---|---|---|---|")
    for grid in ((30, 40), (60, 80)):
        g = torch.Generator().manual_seed(0)
        n = grid[0] * grid[1]
        feats = torch.randn(n, 384, generator=g) + 2 * torch.randn(1, 384, generator=g)
        mask = tokencut_object(feats, grid)[0]
        cut = fastest(lambda: tokencut_object(feats, grid), args.repeats)
        score = fastest(lambda: object_ncuts(feats, mask[None], 0.2), args.repeats)
        print(f"| {n:,} | {cut:.2f} | {score:.2f} | {score / cut:.2f} |", flush=True)


if __name__ == "__main__":
    main()
