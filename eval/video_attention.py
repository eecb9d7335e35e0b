"""Self-attention videos of a DINO ViT, as the reference's video_generation.py makes them, at any resolution.

    python -m eval.video_attention --input_path clip.mp4 --output_path out
    python -m eval.video_attention --input_path frames/ --resize 480 --masks heads --output_path out
    python -m eval.video_attention --input_path a.mp4 b.mp4 frames/ --output_path out
    python -m eval.video_attention --input_path out/attention --video_only --fps 25 --output_path out

Writes OUTPUT_PATH/attention/attn-<frame stem>.jpg (the mean of the heads' [CLS] attention, inferno
colour map), OUTPUT_PATH/frames/frame-NNNN.jpg when the input is a video, OUTPUT_PATH/video.<format>
and, with --masks, OUTPUT_PATH/masks.<format> (the thresholded masks over the frames, with contours);
with several inputs, each input's outputs go to OUTPUT_PATH/<input stem>/. An input whose outputs are complete
(its summary.json, written last, names the same settings and input) is skipped unless --overwrite.

Under torchrun or SLURM, with at least as many inputs as processes, input i goes to rank i % world_size; with
fewer, each input's frame batches are dealt out by rank (batch b to rank b % world_size) and rank 0 writes its
outputs in frame order. summary.json gives world_size and the rank of each input or batch. The outputs equal
those of one process.
"""

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
from dino_seg.flags import bool_flag
from dino_seg.images import ImageError, load_image
from dino_seg.models import is_vit
from dino_seg.provenance import weights_identity
from dino_seg.video import DEFAULT_FPS, VideoError, format_codecs, plays_in_browser, write_video
from dino_seg.video_attention import MASK_MODES, check_resize
from dino_seg.video_runs import RunOptions, inputs_to_do, open_input, output_folders, run_inputs, run_summary
from dino_seg.weights import PRESETS
from eval.common import add_launch_flags, add_weight_flags, load_from_args, resolve_weights, run_launched

DEFAULT_PRESET = "dino_vits8_300ep"  # video_generation.py's ViT-S/8: "the model used for visualizations in our paper"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m eval.video_attention", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_weight_flags(parser, reference_patch_size=8, preferred_preset=DEFAULT_PRESET)
    parser.add_argument("--input_path", required=True, type=str, nargs="+",
                        help="A video file, a folder of .jpg frames, or with --video_only a folder of attention "
                             "images (attn-*.jpg). Several: each gets OUTPUT_PATH/<its name without suffix>/.")
    parser.add_argument("--output_path", default="./", type=str,
                        help="Where the frames/ and attention/ folders and the videos go.")
    parser.add_argument("--overwrite", default=False, type=bool_flag, nargs="?", const=True,
                        help="Redo inputs whose outputs are already complete (made with the same settings).")
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="Share of the attention mass the --masks keep (the paper's 0.6).")
    parser.add_argument("--resize", default=None, type=int, nargs="+",
                        help="Resize the frames first: one size for the short side, or H W. Not needed for memory: "
                             "only the [CLS] attention row is computed, so full-HD frames fit.")
    parser.add_argument("--video_only", action="store_true",
                        help="Only assemble the video from a folder of attention images given as --input_path.")
    parser.add_argument("--fps", default=None, type=float,
                        help=f"Frame rate of the video written (default: the input video's, else {DEFAULT_FPS}).")
    parser.add_argument("--video_format", default=None, choices=["mp4", "webm", "avi"],
                        help="Container: mp4 is MPEG-4 part 2 (as the reference; browsers do not play it); avi is "
                             "Xvid (as the reference); webm is VP8. Default: one the browser plays (VP8 WebM).")
    parser.add_argument("--masks", default=None, nargs="?", const="mean", choices=MASK_MODES,
                        help="Also write masks.<format>: the masks keeping --threshold of the attention mass over "
                             "the frames, of the mean map (--masks or --masks mean) or one per head (--masks heads).")
    parser.add_argument("--batch_size", default=8, type=int, help="Frames per forward pass (under torchrun with "
                        "fewer inputs than processes, each rank computes every world_size-th batch).")
    add_launch_flags(parser)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_launched(args, lambda info, say: run(args, info), interrupted="no partial video was written")


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


if __name__ == "__main__":
    raise SystemExit(main())
