"""Whole-command DAVIS benchmark: `python -m eval.davis` against the official eval_video_segmentation.py, same data
and same weights, each timed from spawn to exit in a fresh process; the masks of both are compared pixel by pixel.

    python benchmarks/davis_end_to_end.py --reference_repo /path/to/dino --data_path /path/to/davis
    python benchmarks/davis_end_to_end.py --reference_repo /path/to/dino --data_path /path/to/davis --repeats 1
    python benchmarks/davis_end_to_end.py --reference_repo /path/to/dino --data_path /path/to/davis --threads 1

--reference_repo is a checkout of facebookresearch/dino (eval_video_segmentation.py, vision_transformer.py,
utils.py); nothing of it is copied here. The reference calls .cuda() everywhere and downloads its palette, so it runs
through a small shim this script writes to its work folder: Tensor.cuda and Module.cuda return the object itself
(CPU), the palette URL is answered with the DAVIS palette of dino_seg.viz, and the script then runs unchanged with
runpy. Ours runs as a user types it, `python -m eval.davis ... --device cpu`, so its time includes what the
reference does not do: scoring J&F, provenance.json and the weights' SHA-256 (a fresh, empty DINO_SEG_CACHE_DIR
per run: the digest is never cached, a first run's cost). Every run writes to a fresh output folder: nothing is
resumed.

Both get the same seeded random ViT weights, saved once as a backbone state dict, the format of the released
dino_deitsmall16_pretrain.pth (the reference's utils.load_pretrained_weights with its default --checkpoint_key
teacher, which such a file lacks, loads the whole dict; the run stops unless it reports all keys matched). Both run
every sequence of ImageSets/2017/val.txt with the default settings (480p, 7 previous frames, radius 12, top-5) and
the same thread count (OMP_NUM_THREADS and MKL_NUM_THREADS; --threads, default torch's default here). Runs
alternate, reference first, and each keeps its fastest of --repeats. "masks identical" is the share of the
reference's mask pixels that ours equals (the same file set is required; a missing file counts all its pixels).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Run by the reference's interpreter: argv = shim, repo, palette file, then the reference's own flags.
SHIM = '''\
import os, runpy, sys, urllib.request
import torch

repo, palette_file = sys.argv[1], sys.argv[2]
torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def urlopen(url, *args, **kwargs):
    if str(url).endswith("/palette.txt"):
        return open(palette_file, "rb")
    raise RuntimeError(f"offline benchmark: no download of {url}")


urllib.request.urlopen = urlopen
sys.path.insert(0, repo)
script = os.path.join(repo, "eval_video_segmentation.py")
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
'''

ALL_KEYS_MATCHED = "<All keys matched successfully>"  # how torch prints load_state_dict(strict=False)'s result


def write_official_weights(path: Path, arch: str, patch_size: int, seed: int) -> list[str]:
    """Save a seeded random backbone as a plain state dict, the key format of the released DINO files
    (cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.*); returns its keys."""
    import torch

    from dino_seg.models import build_backbone

    torch.manual_seed(seed)
    state = build_backbone(arch, patch_size).state_dict()
    torch.save(state, path)
    return list(state)


@dataclass
class MaskAgreement:
    files: int  # PNGs of the reference
    missing: list[str]  # of the reference's, absent from ours
    extra: list[str]  # of ours, absent from the reference's
    pixels: int  # pixels of the reference's masks
    equal: int  # of those, equal in ours (same file, same place, same label index)

    @property
    def share(self) -> float:
        return self.equal / self.pixels if self.pixels else float("nan")


def _pngs(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.png")}


def compare_masks(reference_dir: Path, ours_dir: Path) -> MaskAgreement:
    """Label indices of every <sequence>/<frame>.png of the reference against ours (palette PNGs, read as indices);
    a file missing from ours, or of another size, counts none of its pixels as equal."""
    ref, ours = _pngs(reference_dir), _pngs(ours_dir)
    pixels = equal = 0
    for name in sorted(ref):
        a = np.asarray(Image.open(reference_dir / name))
        pixels += a.size
        if name in ours:
            b = np.asarray(Image.open(ours_dir / name))
            equal += int((a == b).sum()) if a.shape == b.shape else 0
    return MaskAgreement(files=len(ref), missing=sorted(ref - ours), extra=sorted(ours - ref), pixels=pixels,
                         equal=equal)


def count_frames(data_path: Path) -> int:
    """Frames of the sequences of ImageSets/2017/val.txt, as both scripts run them."""
    names = (data_path / "ImageSets" / "2017" / "val.txt").read_text().split()
    return sum(len(list((data_path / "JPEGImages" / "480p" / n).glob("*.jpg"))) for n in names)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Wall seconds of one command from spawn to exit; stdout and stderr go to `log` (and to `log`.err)."""
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        start = time.perf_counter()
        code = subprocess.call(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"`{' '.join(cmd)}` exited with {code}; its last lines:\n{_tail(Path(f'{log}.err'))}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("benchmarks/davis_end_to_end.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--reference_repo", required=True, type=Path,
                        help="A checkout of facebookresearch/dino (holds eval_video_segmentation.py).")
    parser.add_argument("--data_path", required=True, type=Path,
                        help="DAVIS root: JPEGImages/480p, Annotations/480p, ImageSets/2017/val.txt.")
    parser.add_argument("--arch", default="vit_small", choices=("vit_tiny", "vit_small", "vit_base"))
    parser.add_argument("--patch_size", default=16, type=int)
    parser.add_argument("--seed", default=0, type=int, help="Seed of the random weights both load.")
    parser.add_argument("--repeats", default=2, type=int, help="Runs of each command; the fastest is kept.")
    parser.add_argument("--threads", default=None, type=int,
                        help="Threads of both (OMP_NUM_THREADS, MKL_NUM_THREADS); default: torch's default here.")
    parser.add_argument("--work_dir", default=None, type=Path,
                        help="Keep the weights, outputs and logs here (default: a temporary folder, deleted).")
    args = parser.parse_args(argv)
    script = args.reference_repo / "eval_video_segmentation.py"
    if not script.is_file():
        parser.error(f"--reference_repo: no eval_video_segmentation.py in {args.reference_repo}")
    if not (args.data_path / "ImageSets" / "2017" / "val.txt").is_file():
        parser.error(f"--data_path: no ImageSets/2017/val.txt in {args.data_path}")
    if args.repeats < 1:
        parser.error("--repeats: at least 1")

    import torch

    from dino_seg.viz import davis_palette

    threads = args.threads or torch.get_num_threads()
    frames = count_frames(args.data_path)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="davis_e2e_"))).resolve()  # the reference runs in it
    work.mkdir(parents=True, exist_ok=True)
    try:
        weights = work / f"{args.arch}{args.patch_size}_seed{args.seed}.pth"
        write_official_weights(weights, args.arch, args.patch_size, args.seed)
        palette = work / "palette.txt"
        palette.write_text("".join(f"{r} {g} {b}\n" for r, g, b in davis_palette()))
        shim = work / "reference_on_cpu.py"
        shim.write_text(SHIM)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("PYTHONPATH", None)  # the reference imports its own utils and vision_transformer, nothing of ours
        data, model = str(args.data_path.resolve()), ["--arch", args.arch, "--patch_size", str(args.patch_size)]

        def reference(out: Path) -> list[str]:
            return [sys.executable, str(shim), str(args.reference_repo.resolve()), str(palette),
                    "--pretrained_weights", str(weights), *model, "--data_path", data, "--output_dir", str(out)]

        def ours(out: Path) -> list[str]:
            return [sys.executable, "-m", "eval.davis", "--pretrained_weights", str(weights), *model,
                    "--data_path", data, "--output_dir", str(out), "--device", "cpu"]

        load_before = os.getloadavg()
        times: dict[str, list[float]] = {"reference": [], "ours": []}
        loads: dict[str, list[float]] = {"reference": [], "ours": []}  # 1-minute load average as each run ends
        for i in range(args.repeats):
            for name in ("reference", "ours"):
                out, log = work / f"{name}_{i}", work / f"{name}_{i}.log"
                shutil.rmtree(out, ignore_errors=True)
                if name == "reference":
                    seconds = run_timed(reference(out), work, env, log)
                    if ALL_KEYS_MATCHED not in log.read_text():
                        raise SystemExit(f"the reference did not load every weight; its log:\n{_tail(log)}")
                else:
                    cache = work / f"cache_{i}"  # empty: ours hashes the weights, as a first run does
                    shutil.rmtree(cache, ignore_errors=True)
                    seconds = run_timed(ours(out), ROOT, dict(env, DINO_SEG_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT)),
                                        log)
                times[name].append(seconds)
                loads[name].append(os.getloadavg()[0])
                print(f"{name} run {i + 1}/{args.repeats}: {seconds:.1f} s (load {loads[name][-1]:.2f})",
                      file=sys.stderr)
        load_after = os.getloadavg()
        last = args.repeats - 1
        agreement = compare_masks(work / f"reference_{last}", work / f"ours_{last}")
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    best = {name: min(t) for name, t in times.items()}
    model_name = {"vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B"}[args.arch]
    print(f"\n{frames} frames of {args.data_path.name} (ImageSets/2017/val.txt), random {model_name}/{args.patch_size} "
          f"(seed {args.seed}), {threads} threads, CPU ({os.cpu_count()} cores, {platform.machine()}), "
          f"torch {torch.__version__}; fastest of {args.repeats} whole-command runs each, alternating")
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in load_before)} before, "
          f"{' '.join(f'{v:.2f}' for v in load_after)} after")
    runs = {name: ", ".join(f"{t:.1f} (load {v:.1f})" for t, v in zip(times[name], loads[name])) for name in times}
    print(f"runs, seconds (1-minute load average at the end of each): reference {runs['reference']}; "
          f"ours {runs['ours']}\n")
    print("| implementation | seconds (fastest) | frames/s | vs reference | masks identical (share of pixels) |")
    print("|---|---:|---:|---:|---|")
    same = f"{100 * agreement.share:.4f}% of {agreement.pixels} pixels in {agreement.files} PNGs"
    if agreement.missing or agreement.extra:
        same += f"; {len(agreement.missing)} PNG(s) missing from ours, {len(agreement.extra)} extra"
    for name, label, note in (("reference", "reference eval_video_segmentation.py (CPU shim)", "–"),
                              ("ours", "ours `python -m eval.davis` (with J&F scoring)", same)):
        print(f"| {label} | {best[name]:.1f} | {frames / best[name]:.3f} | {best['reference'] / best[name]:.2f}× "
              f"| {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
