"""The work of `python -m eval.video_attention` (eval/video_attention.py holds its flags): attention images and
videos of the inputs, and summary.json. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_seg.cli import check_output_dir
from dino_seg.distributed import DistInfo
from dino_seg.files import save_text
from dino_seg.images import ImageError, load_image
from dino_seg.models import is_vit
from dino_seg.provenance import weights_identity
from dino_seg.video import DEFAULT_FPS, VideoError, format_codecs, plays_in_browser, write_video
from dino_seg.video_attention import MASK_MODES, check_resize
from dino_seg.video_runs import RunOptions, inputs_to_do, open_input, output_folders, run_inputs, run_summary
from dino_seg.weights import PRESETS
from eval.common import load_from_args, resolve_weights


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _video_note(fourcc: str) -> str:
    if plays_in_browser(fourcc):
        return ""
    return f" (codec {fourcc}: browsers do not play it; leave out --video_format for one they do)"


def video_only(args: argparse.Namespace, output_path: Path) -> int:
    """--video_only: the video of a folder of attention images, as the reference assembles it."""
    folder = Path(args.input_path[0])
    if not folder.is_dir():
        return _fail(f"--input_path {folder}: --video_only expects a folder of attention images (attn-*.jpg)")
    images = sorted(p for p in folder.glob("attn-*.jpg") if p.is_file())
    if not images:
        return _fail(f"--input_path {folder}: no attention images (attn-*.jpg) in this folder")
    frames = (np.asarray(load_image(p)) for p in tqdm(images, desc="video", unit="frame"))
    try:
        path = write_video(frames, output_path / "video", args.fps or DEFAULT_FPS, format_codecs(args.video_format))
    except (ImageError, VideoError, OSError) as err:
        return _fail(str(err))
    print(f"wrote {path} ({len(images)} frames at {args.fps or DEFAULT_FPS:g} fps)")
    return 0


def run(args: argparse.Namespace, info: DistInfo | None = None) -> int:
    """Under torchrun or SLURM (`info`), whole inputs are dealt out by rank when there are at least as many as
    processes, else each input's frame batches (rank 0 then writes that input's outputs); rank 0 alone prints and
    writes the run's summary.json."""
    import torch

    info = info or DistInfo(0, 1, 0, torch.device("cpu"), None, "none")
    if not 0 <= args.threshold <= 1:
        return _fail(f"--threshold: expected a share of the attention mass in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        return _fail(f"--batch_size: expected at least 1, got {args.batch_size}")
    if args.fps is not None and args.fps <= 0:
        return _fail(f"--fps: expected a positive frame rate, got {args.fps}")
    output_path = Path(args.output_path)
    check_output_dir(output_path, "--output_path")
    if args.video_only:
        if len(args.input_path) > 1:
            return _fail("--video_only: assembles one folder of attention images; give one --input_path")
        return video_only(args, output_path) if info.is_main else 0
    # Check the inputs before loading any weights: a wrong path fails at once.
    inputs = [open_input(path) for path in args.input_path]
    folders = output_folders(inputs, output_path)
    model, description = load_from_args(args, info.device)
    if not is_vit(model):
        return _fail("--arch resnet50 has no self-attention; use a ViT")
    if args.resize:
        check_resize(args.resize, model.patch_size)
    if args.masks is not None and args.masks not in MASK_MODES:
        return _fail(f"--masks: expected one of {', '.join(MASK_MODES)}, got {args.masks!r}")
    options = RunOptions(batch_size=args.batch_size, resize=args.resize, threshold=args.threshold, masks=args.masks,
                         fps=args.fps, codecs=format_codecs(args.video_format), weights=description,
                         settings=run_settings(args, model))
    todo = inputs_to_do(inputs, folders, options, args.overwrite, info.rank)
    if info.is_main:
        print(f"weights: {description}" + (f" (x{info.world_size} processes, {info.backend})" if info.distributed
                                           else ""))
        for i, inp in enumerate(inputs):
            print(f"input: {inp.describe()}" + ("" if i in todo else f": complete in {folders[i]}, skipped "
                                                                        "(--overwrite to redo it)"))
    counts = [inputs[i].count for i in todo]
    with tqdm(total=sum(counts) if all(counts) else None, desc="attention", unit="frame",
              disable=not info.is_main or not todo) as bar:
        records = run_inputs(model, inputs, folders, todo, options, info.rank, info.world_size,
                             progress=lambda n: bar.update(n - bar.n))
    if records is None:
        return 0  # ranks other than 0: rank 0 reports
    if len(inputs) > 1:
        save_text(output_path / "summary.json", json.dumps(
            run_summary(inputs, folders, output_path, records, todo, info.world_size, options), indent=2) + "\n")
    for i, record in records.items():
        folder = folders[i]
        print(f"wrote {record['frames']} attention images to {folder / 'attention'}")
        print(f"wrote {folder / record['video']} ({record['fps']:g} fps){_video_note(record['fourcc'])}")
        if record["masks_video"] is not None:
            print(f"wrote {folder / record['masks_video']} (masks keeping {args.threshold:g} of the attention mass, "
                  f"{args.masks})")
    return 0


def run_settings(args: argparse.Namespace, model) -> dict:
    """What decides an input's outputs besides its frame rate: recorded beside them and compared on resume. The
    batch size and the number of processes are not: outputs do not depend on them."""
    source, _ = resolve_weights(args)
    return {"weights": weights_identity(source, PRESETS),
            "checkpoint_key": args.checkpoint_key if source and source not in PRESETS else None,
            "arch": model.arch, "patch_size": model.patch_size, "resize": args.resize,
            "masks": args.masks, "threshold": args.threshold if args.masks is not None else None,
            "video_format": args.video_format}
