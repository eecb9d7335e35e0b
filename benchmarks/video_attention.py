"""Attention videos: frames per second and peak memory, ours against video_generation.py's full-attention path.

    python benchmarks/video_attention.py                       # ViT-S/16 and ViT-S/8 at 480p and 1080p, CPU
    python benchmarks/video_attention.py --sizes 480p          # 1-2 minutes
    python benchmarks/video_attention.py --device cuda --frames 8 --batch_size 8 --repeats 3

Per frame, from decoded RGB pixels to the JPEG bytes of the attention image (no disk, no video encoding):
"reference" runs video_generation.py's steps: ToTensor, Normalize, crop, get_last_selfattention (every
block materialises its (1+N) x (1+N) attention as the reference's ViT does), the 60% masks it computes
and discards, every head upsampled, their mean, plt.imsave. "ours" is dino_seg.video_attention in
batches of --batch_size: fused attention in the first blocks, the last block's [CLS] row only, the mean
coloured at patch resolution. Random weights (speed does not depend on them).

Every timed run is a fresh process, so its peak memory is its own: peak RSS growth over the process after
the model and frames are built and a small warm-up frame has run (CPU), or the CUDA allocator's peak (GPU).
Runs of the two paths alternate (reference, ours, reference, ours, ...) and each path keeps its fastest of
--repeats. The reference is not run where the two (1+N)^2 attention tensors it holds at once would not fit
in the free memory: the table gives what they would need.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

SIZES = {"480p": (480, 854), "1080p": (1080, 1920)}  # (H, W) of 16:9 frames


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def reference_last_selfattention(model, x: torch.Tensor) -> torch.Tensor:
    """The reference ViT's forward up to get_last_selfattention: explicit softmax attention in every block."""
    tokens = model.prepare_tokens(x)
    for i, blk in enumerate(model.blocks):
        y = blk.norm1(tokens)
        b, n, d = y.shape
        a = blk.attn
        qkv = a.qkv(y).reshape(b, n, 3, a.num_heads, d // a.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * a.scale).softmax(dim=-1)  # (B, heads, N, N)
        if i == len(model.blocks) - 1:
            return attn
        tokens = tokens + a.proj((attn @ qkv[2]).transpose(1, 2).reshape(b, n, d))
        tokens = tokens + blk.mlp(blk.norm2(tokens))
    raise AssertionError("unreachable")


def reference_frame(model, rgb: np.ndarray, device: torch.device) -> bytes:
    """video_generation.py's _inference for one decoded frame, up to the JPEG bytes of plt.imsave."""
    import matplotlib.pyplot as plt
    from torchvision import transforms

    from dino_seg.images import IMAGENET_MEAN, IMAGENET_STD

    p = model.patch_size
    img = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(rgb)
    img = img[:, : img.shape[1] - img.shape[1] % p, : img.shape[2] - img.shape[2] % p].unsqueeze(0)
    h, w = img.shape[-2] // p, img.shape[-1] // p
    attentions = reference_last_selfattention(model, img.to(device))
    nh = attentions.shape[1]
    attentions = attentions[0, :, 0, 1:].reshape(nh, -1)
    val, idx = torch.sort(attentions)  # the masks it computes, then never uses
    val /= torch.sum(val, dim=1, keepdim=True)
    th_attn = torch.cumsum(val, dim=1) > 0.4
    idx2 = torch.argsort(idx)
    for head in range(nh):
        th_attn[head] = th_attn[head][idx2[head]]
    th_attn = F.interpolate(th_attn.reshape(nh, h, w).float()[None], scale_factor=p, mode="nearest")[0].cpu().numpy()
    attentions = F.interpolate(attentions.reshape(nh, h, w)[None], scale_factor=p, mode="nearest")[0].cpu().numpy()
    buf = io.BytesIO()
    plt.imsave(fname=buf, arr=sum(attentions[i] * 1 / nh for i in range(nh)), cmap="inferno", format="jpg")
    return buf.getvalue()


def our_frames(model, frames: list[np.ndarray], batch_size: int) -> list[bytes]:
    from matplotlib import image as mpl_image

    from dino_seg.video_attention import Frame, attention_frames

    out = []
    for result in attention_frames(model, (Frame(str(t), f) for t, f in enumerate(frames)), batch_size=batch_size):
        buf = io.BytesIO()
        mpl_image.imsave(buf, result.attention_rgba(), format="jpg")
        out.append(buf.getvalue())
    return out


def child(spec: dict) -> dict:
    """One (model, size, path) in this process: fastest seconds per frame and peak memory growth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  imported before the baseline: its memory is not the path's

    import dino_seg.video_attention  # noqa: F401
    from dino_seg.device import pick_device
    from dino_seg.models import build_backbone

    torch.set_num_threads(spec["threads"])
    device = pick_device(spec["device"])
    torch.manual_seed(0)
    model = build_backbone(spec["arch"], spec["patch"]).to(device).eval().requires_grad_(False)
    height, width = SIZES[spec["size"]]
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(spec["frames"])]

    def run(batch: list[np.ndarray]) -> None:
        with torch.no_grad():
            if spec["path"] == "reference":
                for f in batch:
                    reference_frame(model, f, device)
            else:
                our_frames(model, batch, spec["batch_size"])

    run([frames[0][:64, :64]])  # warm-up on a small frame: kernels, thread pools, JPEG encoder
    base = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()) - base
    return {"fps": len(frames) / seconds, "peak_gib": peak / 2**30}


def attention_gib(heads: int, size: str, patch: int) -> float:
    """The two (1+N)^2 float32 tensors (logits and probabilities) one reference block holds at once."""
    height, width = SIZES[size]
    n = 1 + (height // patch) * (width // patch)
    return 2 * heads * n * n * 4 / 2**30


def free_gib(device: str) -> float:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        return free / 2**30
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) / 2**20


def run_child(spec: dict) -> dict:
    # The child imports dino_seg from this checkout, as `python -m` from its root would.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"failed ({tail[:80]})"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="vit_small/16,vit_small/8")
    parser.add_argument("--sizes", default="480p,1080p", help=f"Comma-separated, of {', '.join(SIZES)}.")
    parser.add_argument("--frames", default=1, type=int, help="Frames per timed run.")
    parser.add_argument("--batch_size", default=1, type=int, help="Our frames per forward pass.")
    parser.add_argument("--repeats", default=2, type=int, help="Timed runs per path (fastest kept); 1 on CPU above "
                        "5000 tokens (runs of 10 s to minutes) unless --slow_repeats.")
    parser.add_argument("--slow_repeats", action="store_true", help="Repeat the long runs too.")
    parser.add_argument("--threads", default=2, type=int, help="torch threads (CPU).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    where = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
             else f"{platform.processor() or 'cpu'}, {args.threads} threads")
    print(f"device: {args.device} ({where}); torch {torch.__version__}; {args.frames} frame(s) per run, ours in "
          f"batches of {args.batch_size}; fastest of {args.repeats} alternating runs\n")
    print("| model | frames | tokens | path | frames/s | s/frame | speed-up | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    heads = 6  # ViT-S
    for spec in args.models.split(","):
        arch, patch = spec.split("/")
        patch = int(patch)
        for size in args.sizes.split(","):
            height, width = SIZES[size]
            tokens = 1 + (height // patch) * (width // patch)
            need = attention_gib(heads, size, patch)
            fits = need < 0.8 * free_gib(args.device)  # the rest of the model needs memory too
            slow = tokens > 5000 and args.device == "cpu" and not args.slow_repeats
            base = {"arch": arch, "patch": patch, "size": size, "device": args.device, "frames": args.frames,
                    "batch_size": args.batch_size, "threads": args.threads}
            paths = ("reference", "ours") if fits else ("ours",)
            results = {"reference": {"error": f"not run: its attention alone needs {need:.1f} GiB"}}
            for _ in range(1 if slow else args.repeats):
                for path in paths:
                    r = run_child({**base, "path": path})
                    old = results.get(path)
                    if old is None or "error" in old or ("fps" in r and r["fps"] > old["fps"]):
                        results[path] = r
            ref_fps = results["reference"].get("fps")
            label = f"{size} {width}x{height}"
            for path in ("reference", "ours"):
                r = results[path]
                name = f"{arch}/{patch}"
                if "error" in r:
                    print(f"| {name} | {label} | {tokens} | {path} | {r['error']} | | | |")
                    continue
                ratio = f"{r['fps'] / ref_fps:.2f}x" if ref_fps else "-"
                print(f"| {name} | {label} | {tokens} | {path} | {r['fps']:.3g} | {1 / r['fps']:.1f} | {ratio} | "
                      f"{r['peak_gib']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
