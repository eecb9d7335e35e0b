"""DAVIS 2017 semi-supervised video object segmentation by label propagation, scored with J&F.

    python -m eval.davis --pretrained_weights dino_vits16 --data_path DAVIS --output_dir out
    python -m eval.davis --results_path out --data_path DAVIS        # score an existing results folder
    torchrun --nproc_per_node 4 -m eval.davis --pretrained_weights dino_vits16 --data_path DAVIS --output_dir out
    python -m eval.davis --pretrained_weights dinov3_vits16 --protocol dinov3 --data_path DAVIS --output_dir out

--protocol dino (any backbone) is the reference's eval_video_segmentation.py: frames resized to a short side of
480 with the long side floored to a multiple of 64; with patch 14 (DINOv2) the ViT then drops the pixels past the
last whole patch (under 14 on the bottom and right) and the masks of the covered area are resized back to the frame.
--protocol dinov3 is DINOv3's segmentation_tracking notebook (dino_seg/propagation_v3.py): short side 960, both
sides rounded up to multiples of the patch (bicubic), temperature 0.2, top-5 within a circle of radius 12, the first
frame plus 7 previous frames as context. DINOv3's published J&F use this protocol: do not compare them with DINO's.

Writes OUTPUT_DIR/<sequence>/<frame>.png (indexed PNGs, DAVIS palette, original size) for every frame, then
global_results-<set>.csv, per-sequence_results-<set>.csv (davis2017-evaluation's columns) and summary.json.
OUTPUT_DIR/provenance.json records the weights and settings; a sequence whose outputs are all present and were
made with the same ones is skipped unless --overwrite, and other settings stop the run unless --overwrite.
Under torchrun or SLURM the sequences are split over the processes (gloo on CPU, NCCL on GPU); the masks are
those of one process, rank 0 scores them and summary.json records world_size and each sequence's rank.
"""

from __future__ import annotations

import argparse

from dino_seg.flags import bool_flag
from dino_seg.names import DAVIS_RESOLUTIONS as RESOLUTIONS
from dino_seg.names import PRECISIONS
from eval.common import add_discovery_flags, add_launch_flags, add_weight_flags, run_launched


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m eval.davis", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_weight_flags(parser)
    parser.add_argument("--output_dir", default=".", help="Where to write the segmentations, CSVs and summary.json.")
    parser.add_argument("--data_path", default="/path/to/davis/", type=str,
                        help="DAVIS root holding JPEGImages/, Annotations/ and ImageSets/.")
    parser.add_argument("--n_last_frames", type=int, default=7,
                        help="Number of preceding frames whose predictions join the first frame as context.")
    parser.add_argument("--size_mask_neighborhood", default=12, type=int,
                        help="Only source patches within this many patches of the query count (0: all).")
    parser.add_argument("--topk", type=int, default=5, help="Accumulate labels from the top k neighbours.")
    parser.add_argument("--bs", type=int, default=6, help="Frames per backbone batch; reduce if out of memory.")
    parser.add_argument("--set", default="val", choices=("val", "train"), help="DAVIS subset to run and score.")
    parser.add_argument("--sequences", default="", type=str,
                        help="Comma-separated sequence names; empty: every sequence of --set.")
    parser.add_argument("--resolution", default="480p", choices=RESOLUTIONS, help="DAVIS frames to read.")
    parser.add_argument("--protocol", default="dino", choices=("dino", "dinov3"),
                        help="dino: the reference's propagation (any backbone); dinov3: DINOv3's segmentation_tracking "
                             "notebook (see above).")
    parser.add_argument("--short_side", default=None, type=int,
                        help="Frames are resized to this short side: --protocol dino 480, the long side floored to a "
                             "multiple of 64; --protocol dinov3 960, both sides rounded up to multiples of the patch "
                             "(smaller is faster but scores differ from the published ones).")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="The backbone's precision: fp32 (exact, the default); bf16 (CUDA, or a CPU with "
                             "bfloat16) or fp16 (CUDA) autocast. Propagation stays fp32.")
    add_launch_flags(parser)
    parser.add_argument("--overwrite", default=False, type=bool_flag, nargs="?", const=True,
                        help="Redo sequences whose outputs are already complete.")
    parser.add_argument("--results_path", default=None, type=str,
                        help="Only score this folder of results (<sequence>/<frame>.png) against --data_path; "
                             "the CSV files are written into it.")
    parser.add_argument("--first_frame", default="annotation", choices=("annotation", "discover"),
                        help="First-frame labels: the DAVIS annotation, or found by --method (zero-annotation; the "
                             "annotation then only pairs discovered objects with annotated ones for scoring).")
    add_discovery_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from eval.davis_run import run  # torch and the models load only now: --help and bad flags answer at once

    return run_launched(args, lambda info, say: run(args, info),
                        interrupted="complete sequences are kept (files are written whole); run the same command "
                                    "again to resume")


if __name__ == "__main__":
    raise SystemExit(main())
