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

from dino_seg.flags import bool_flag
from dino_seg.names import DEFAULT_FPS
from dino_seg.names import VIDEO_MASK_MODES as MASK_MODES
from eval.common import add_launch_flags, add_weight_flags, run_launched

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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from eval.video_attention_run import run  # torch and the models load only now: --help and bad flags answer at once

    return run_launched(args, lambda info, say: run(args, info), interrupted="no partial video was written")


if __name__ == "__main__":
    raise SystemExit(main())
