"""onnxruntime against PyTorch on the exported DINO ViT: milliseconds per batch and largest differences.

    python benchmarks/export.py                       # ViT-S/16, random weights, CPU
    python benchmarks/export.py --arch vit_small --patch_size 8 --sizes 224 480

Exports once with dynamic batch and size (traced at the first --sizes value), then runs the same normalised
inputs through PyTorch (the exported module's forward: one pass giving the same three outputs, fp32) and
onnxruntime's CPU provider, at each size and batch; times are the fastest of --repeats calls. Differences are
against the model's own forward_features and attention code.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dino_seg.export import OUTPUTS, ExportedViT, export_onnx, reference_outputs  # noqa: E402
from dino_seg.models import build_backbone  # noqa: E402


def fastest(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("benchmarks/export.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--arch", default="vit_small", choices=("vit_tiny", "vit_small", "vit_base"))
    parser.add_argument("--patch_size", default=16, type=int, choices=(8, 16))
    parser.add_argument("--sizes", default=[224, 480], type=int, nargs="+", help="Square input sides.")
    parser.add_argument("--batches", default=[1, 4], type=int, nargs="+")
    parser.add_argument("--repeats", default=3, type=int)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_backbone(args.arch, args.patch_size).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(model, path, (args.sizes[0], args.sizes[0]))
        export_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 2**20
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wrapper = ExportedViT(model).eval()
        rows = []
        for side in args.sizes:
            for batch in args.batches:
                x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(side + batch))
                with torch.no_grad():
                    t_torch = fastest(lambda: wrapper(x), args.repeats)
                    want = reference_outputs(model, x)
                feed = {"image": x.numpy()}
                t_ort = fastest(lambda: session.run(None, feed), args.repeats)
                got = session.run(None, feed)
                diffs = [float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want)]
                rows.append((side, batch, t_torch, t_ort, diffs))
    print(f"\n{args.arch}/{args.patch_size}, random weights, export {export_s:.1f} s, {size_mb:.1f} MiB, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"{'size':>9}{'batch':>7}{'torch ms':>10}{'ort ms':>9}{'torch/ort':>11}  largest |ort - torch| "
          f"({', '.join(OUTPUTS)})")
    for side, batch, t_torch, t_ort, diffs in rows:
        print(f"{side:>4}x{side:<4}{batch:>7}{1000 * t_torch:>10.0f}{1000 * t_ort:>9.0f}{t_torch / t_ort:>10.2f}x  "
              + ", ".join(f"{d:.1e}" for d in diffs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
