"""Peak memory and time of the bilateral-solver refinement (--refine) by photo size, full grid vs downscaled.

    python benchmarks/refine_memory.py              # 0.3, 1.5 and 3 MP at full resolution; 12 MP downscaled
    python benchmarks/refine_memory.py --full_12mp  # also a 12-MP photo on the full grid (~1.1 GB)
    python benchmarks/refine_memory.py --agreement  # also: refined-mask IoU, downscaled vs full grid, at 3 MP

Each case runs in its own process; peak memory is the largest growth of the NumPy/SciPy allocations during the
refinement (tracemalloc, which NumPy reports its buffers to), above what the synthetic photo holds (a gradient with
coloured ellipses and sensor-like noise, so the bilateral grid gets as many vertices as a real photo: a flat image
would flatter it). "downscaled" is what --refine does above
dino_seg.bilateral.MAX_GRID_PIXELS; "full" is TokenCut's solver on every pixel.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc

import numpy as np

SIZES = {"0.3 MP": (640, 480), "1.5 MP": (1414, 1060), "3 MP": (2000, 1500), "12 MP": (4000, 3000)}


def photo(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic photo (H, W, 3) uint8 and a blocky coarse mask (H, W) bool around its main ellipse."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([90 + 80 * xx / w, 120 + 60 * yy / h, 160 - 60 * xx / w], axis=-1)
    for k in range(6):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = w / rng.uniform(5, 12), h / rng.uniform(5, 12)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        img[inside] = rng.uniform(0, 255, 3)
    img = np.clip(img + rng.normal(0, 6, img.shape).astype(np.float32), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    p = max(16, w // 40)  # patch-sized steps, as a coarse discovery mask has
    mask[(h // 3) // p * p:(2 * h // 3) // p * p, (w // 3) // p * p:(2 * w // 3) // p * p] = True
    return img, mask


def child(w: int, h: int, full: bool) -> None:
    from dino_seg.bilateral import MAX_GRID_PIXELS, bilateral_solver_output

    img, mask = photo(w, h)
    tracemalloc.start()
    t0 = time.perf_counter()
    bilateral_solver_output(img, mask, max_pixels=None if full else MAX_GRID_PIXELS)
    print(json.dumps({"seconds": time.perf_counter() - t0,
                      "peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full_12mp", action="store_true", help="Also solve a 12-MP photo on the full grid.")
    parser.add_argument("--agreement", action="store_true",
                        help="Also compare the downscaled grid's refined mask with the full grid's on a 3-MP photo.")
    parser.add_argument("--child", nargs=3, metavar=("W", "H", "FULL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2] == "1")
        return
    cases = [(name, True) for name in ("0.3 MP", "1.5 MP", "3 MP")] + [("12 MP", False)]
    if args.full_12mp:
        cases.append(("12 MP", True))
    print("| photo | grid | seconds | peak MB |\n|---|---|---|---|")
    for name, full in cases:
        w, h = SIZES[name]
        out = subprocess.run([sys.executable, __file__, "--child", str(w), str(h), "1" if full else "0"],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} ({w}x{h}) | {'full' if full else 'downscaled'} | {r['seconds']:.1f} | {r['peak_mb']:.0f} |",
              flush=True)
    if args.agreement:
        from dino_seg.bilateral import bilateral_solver_output

        img, mask = photo(*SIZES["3 MP"])
        full = bilateral_solver_output(img, mask, max_pixels=None)
        for cap in (1_500_000, 750_000):
            small = bilateral_solver_output(img, mask, max_pixels=cap)
            iou = (small.mask & full.mask).sum() / (small.mask | full.mask).sum()
            print(f"3 MP, grid on {cap / 1e6:.2f} MP: refined-mask IoU with the full grid's {iou:.4f}")


if __name__ == "__main__":
    main()
