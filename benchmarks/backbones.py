"""Each DINO generation at ViT-S against DINO (v1) in the same run: attention, discovery, propagation, memory.

    python benchmarks/backbones.py                       # 480 x 640 photo, 480 x 854 video frames, best device
    python benchmarks/backbones.py --device cpu --repeats 3 --frame 240 427

Backbones (random weights of the released ViT-S sizes; speed does not depend on the values): DINO ViT-S/16,
DINOv2 ViT-S/14 without and with 4 registers, DINOv3 ViT-S/16 (RoPE, 4 storage tokens), all through
dino_seg.backbones. Columns:
- attention: dino_seg.attention.compute_attention on the photo (--image_size 480 480 as eval.attention);
- discovery: extract_features + TokenCut on the photo (eval.discover's default);
- propagation: one frame of each DAVIS protocol at the --frame size: its backbone pass plus the propagation from a
  full context (the first frame and 7 previous frames); "dino" is the reference's (short side 480, temperature 0.1,
  square-window top-5), "dinov3" the segmentation_tracking notebook's (circle of radius 12, top-5, temperature 0.2),
  both here at the same frame size (the notebook's own 960 short side has 4x the patches);
- peak: on CPU (Linux), the peak resident set over the four calls (VmHWM, reset before them through
  /proc/self/clear_refs) minus the resident set before them, each backbone in a fresh process (freed pages are
  reused, so in-process growth would undercount); on CUDA, max_memory_allocated over the calls.
Calls are interleaved across backbones and the fastest of --repeats kept, so machine load does not favour one.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from PIL import Image

from dino_seg.attention import compute_attention
from dino_seg.backbones import Backbone, as_backbone
from dino_seg.device import pick_device
from dino_seg.discovery import discover, extract_features
from dino_seg.models import build_backbone
from dino_seg.propagation import propagate_labels
from dino_seg.propagation_v3 import neighbourhood_mask, propagate

IMAGE = Path(__file__).resolve().parent.parent / "assets" / "images" / "blackswan.jpg"
CONTEXT = 8  # the first frame + 7 previous ones, as both protocols' defaults


def backbones(device: torch.device) -> dict[str, Backbone]:
    torch.manual_seed(0)
    models = {
        "DINO ViT-S/16": build_backbone("vit_small", 16),
        "DINOv2 ViT-S/14": timm.create_model("vit_small_patch14_dinov2", img_size=518, num_classes=0,
                                             dynamic_img_size=True),
        "DINOv2 ViT-S/14 reg": timm.create_model("vit_small_patch14_reg4_dinov2", img_size=518, num_classes=0,
                                                 dynamic_img_size=True),
        "DINOv3 ViT-S/16": timm.create_model("vit_small_patch16_dinov3_qkvb", num_classes=0),
    }
    return {name: as_backbone(m, name).to(device).eval().requires_grad_(False) for name, m in models.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tasks(backbone: Backbone, photo: Image.Image, frame_hw: tuple[int, int], device: torch.device) -> dict:
    """The measured calls of one backbone (closures over inputs prepared once)."""
    p = backbone.patch_size
    h, w = frame_hw[0] // p, frame_hw[1] // p
    frame = torch.randn(1, 3, h * p, w * p, device=device)
    g = torch.Generator().manual_seed(0)
    ctx = F.normalize(torch.randn(CONTEXT, h, w, backbone.embed_dim, generator=g), dim=-1).to(device)
    labels = torch.softmax(torch.randn(CONTEXT, 3, h, w, generator=g), dim=1).to(device)
    near = neighbourhood_mask(h, w, 12, "circle", device)

    def features() -> torch.Tensor:
        return F.normalize(backbone.patch_features(frame)[0], dim=-1)  # (h, w, D)

    return {
        "attention": lambda: compute_attention(backbone, photo, (480, 480)),
        "discovery": lambda: discover(extract_features(backbone, photo), "tokencut"),
        "dino": lambda: propagate_labels(ctx, labels, features(), topk=5, radius=12, temperature=0.1),
        "dinov3": lambda: propagate(features(), ctx, labels.permute(0, 2, 3, 1), near, 5, 0.2),
    }


def measure(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, CUDA peak MiB or NaN on CPU) of one call."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return seconds, peak


def _status_mib(field: str) -> float:
    """A /proc/self/status size (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def peak_in_fresh_process(name: str, frame: list[int]) -> float:
    """Peak resident-set growth (MiB) of one backbone's four calls, measured in a child process."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--device", "cpu", "--peak_of", name, "--frame", *map(str, frame)],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", default=3, type=int)
    parser.add_argument("--frame", default=[480, 854], type=int, nargs=2, help="H W of the video frames.")
    parser.add_argument("--peak_of", default=None, help=argparse.SUPPRESS)  # the child process of a CPU run
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if args.peak_of:
        photo = Image.open(IMAGE).convert("RGB").resize((640, 480), Image.BICUBIC)
        backbone = backbones(device)[args.peak_of]
        fns = tasks(backbone, photo, tuple(args.frame), device)
        base = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current one
        for fn in fns.values():
            with torch.no_grad():
                fn()
        print(f"{_status_mib('VmHWM') - base:.1f}")
        return 0
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads")
    photo = Image.open(IMAGE).convert("RGB").resize((640, 480), Image.BICUBIC)
    print(f"device: {device} ({where}); torch {torch.__version__}; photo 480x640, frames {args.frame[0]}x"
          f"{args.frame[1]}; fastest of {args.repeats} interleaved calls")
    models = backbones(device)
    calls = {name: tasks(b, photo, tuple(args.frame), device) for name, b in models.items()}
    best: dict[tuple[str, str], float] = {}
    peak: dict[str, float] = {}
    for fns in calls.values():  # warm-up
        for fn in fns.values():
            measure(fn, device)
    for _ in range(args.repeats):
        for task in ("attention", "discovery", "dino", "dinov3"):
            for name, fns in calls.items():
                seconds, mib = measure(fns[task], device)
                best[name, task] = min(best.get((name, task), float("inf")), seconds)
                peak[name] = max(peak.get(name, 0.0), mib)
    if device.type != "cuda":
        for name in models:
            peak[name] = peak_in_fresh_process(name, args.frame)
    base = next(iter(models))
    print()
    print("| backbone | tokens (photo) | attention ms | discovery ms | propagation dino s/frame | "
          "propagation dinov3 s/frame | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, b in models.items():
        p = b.patch_size
        tokens = f"{b.num_prefix_tokens} + {(480 // p) * (480 // p)}"

        def cell(task: str, scale: float, fmt: str) -> str:
            value = best[name, task] * scale
            ratio = best[name, task] / best[base, task]
            return f"{value:{fmt}}" + ("" if name == base else f" ({ratio:.2f}x)")

        ratio = peak[name] / peak[base] if peak[base] > 0 else float("nan")
        mem = f"{peak[name]:.0f}" + ("" if name == base else f" ({ratio:.2f}x)")
        print(f"| {name} | {tokens} | {cell('attention', 1000, '.0f')} | {cell('discovery', 1000, '.0f')} | "
              f"{cell('dino', 1, '.2f')} | {cell('dinov3', 1, '.2f')} | {mem} |")
    print(f"\nratios: against {base} in the same run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
