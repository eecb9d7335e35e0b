"""The work of `python -m eval.video_attention` (eval/video_attention.py holds its flags): attention images and
videos of the frames, and summary.json. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_seg.cli import check_output_dir
from dino_seg.distributed import DistInfo
from dino_seg.files import save_text
from dino_seg.images import ImageError, load_image
from dino_seg.models import is_vit
from dino_seg.video import DEFAULT_FPS, VideoError, format_codecs, plays_in_browser, video_info, write_video
from dino_seg.video_attention import (MASK_MODES, Frame, check_resize, folder_frames, jpeg_frames, save_frame,
                                      sharded_attention_frames, video_frames, write_attention_video)
from eval.common import load_from_args


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _saved(frames: Iterator[Frame], folder: Path) -> Iterator[Frame]:
    # The reference's frames/ folder, written as frames are decoded (the model sees the decoded pixels,
    # not their JPEG copies as in the reference).
    for frame in frames:
        save_frame(folder / f"{frame.name}.jpg", frame.rgb)
        yield frame


def _video_note(fourcc: str, path: Path) -> str:
    if plays_in_browser(fourcc):
        return ""
    return f" (codec {fourcc}: browsers do not play it; leave out --video_format for one they do)"


def video_only(args: argparse.Namespace, output_path: Path) -> int:
    """--video_only: the video of a folder of attention images, as the reference assembles it."""
    folder = Path(args.input_path)
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
    """Under torchrun or SLURM (`info`), every rank computes every world_size-th batch of frames and rank 0
    alone writes the frames, attention images, videos and summary.json."""
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
        return video_only(args, output_path) if info.is_main else 0
    # Check the input before loading any weights: a wrong path fails at once.
    input_path = Path(args.input_path)
    if input_path.is_dir():
        paths = jpeg_frames(input_path)
        frames, total, fps = folder_frames(paths), len(paths), args.fps or DEFAULT_FPS
        source = f"{len(paths)} frames of {input_path}"
    elif input_path.is_file():
        video_fps, total = video_info(input_path)
        fps = args.fps or video_fps  # the reference takes the rate of the video it extracts
        frames = video_frames(input_path)
        if info.is_main:  # only rank 0 writes; every rank decodes the whole stream to cut the same batches
            frames = _saved(frames, output_path / "frames")
        source = f"video {input_path} ({video_fps:g} fps)"
    else:
        return _fail(f"--input_path {input_path}: no such file or folder")
    model, description = load_from_args(args, info.device)
    if not is_vit(model):
        return _fail("--arch resnet50 has no self-attention; use a ViT")
    if args.resize:
        check_resize(args.resize, model.patch_size)
    if args.masks is not None and args.masks not in MASK_MODES:
        return _fail(f"--masks: expected one of {', '.join(MASK_MODES)}, got {args.masks!r}")
    results = sharded_attention_frames(model, frames, args.resize, args.batch_size, info.rank, info.world_size)
    if not info.is_main:
        for _ in results:  # joins rank 0's gathers; yields nothing here
            pass
        return 0
    print(f"weights: {description}" + (f" (x{info.world_size} processes, {info.backend})" if info.distributed else ""))
    print(f"input: {source}")
    batches: list[dict] = []  # per batch: the rank that computed it, its first and last frames

    def ordered() -> Iterator:
        for result, index, rank in results:
            if len(batches) == index:
                batches.append({"rank": rank, "first": result.name, "last": result.name, "frames": 0})
            batches[index].update(last=result.name, frames=batches[index]["frames"] + 1)
            yield result

    with tqdm(total=total or None, desc="attention", unit="frame") as bar:
        result = write_attention_video(
            ordered(), output_path / "video", fps, codecs=format_codecs(args.video_format),
            attention_dir=output_path / "attention", masks=args.masks, threshold=args.threshold,
            on_frame=lambda _: bar.update())
    save_text(output_path / "summary.json", json.dumps({
        "world_size": info.world_size, "frames": result.frames, "batch_size": args.batch_size,
        "weights": description, "batches": batches}, indent=2) + "\n")
    print(f"wrote {result.frames} attention images to {output_path / 'attention'}")
    print(f"wrote {result.video} ({fps:g} fps){_video_note(result.fourcc, result.video)}")
    if result.masks_video is not None:
        print(f"wrote {result.masks_video} (masks keeping {args.threshold:g} of the attention mass, {args.masks})")
    return 0
