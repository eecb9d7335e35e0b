"""Unsupervised object discovery (attention threshold, LOST, TokenCut, MaskCut) on an image, a folder or a benchmark.

    python -m eval.discover --pretrained_weights dino_deitsmall16_pretrain.pth --image_path photo.jpg
    python -m eval.discover --method lost --image_path VOC2007/JPEGImages --gt_dir VOC2007/Annotations
    python -m eval.discover --benchmark ecssd --data_path datasets --refine --output_dir out/ecssd

For each image, OUTPUT_DIR/<image path relative to --image_path, without suffix>/ (as eval.attention) gets patches.npy
(bool, objects x h x w), masks.npy (bool, objects x H x W at the original size), scores.npy (float32,
h x w), boxes.json ([x0, y0, x1, y1] per object, original-image pixels), objects.json (the same objects in the same
order with their score, 1 - Ncut), objects.png (masks and boxes) and scores.png (the score map); with --refine
also refined.npy (float32 H x W, the bilateral solver's soft output), refined_masks.npy and refined.png. With
--gt_dir (mask PNGs or VOC XML, in the image's subfolder first) or --benchmark, scores.csv gets one row per image
and summary.json a `coarse` and (with --refine) a `refined` block: maxFbeta, IoU, Acc (TokenCut's metric.py), CorLoc
and Jaccard, as fractions. --resume skips the images already complete in OUTPUT_DIR.
"""

from __future__ import annotations

import argparse

from dino_seg.names import DISCOVERY_BENCHMARKS, PREPROCESS_MODES
from eval.common import add_discovery_flags, add_image_flags, add_launch_flags, add_weight_flags, run_launched


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m eval.discover", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_weight_flags(parser, reference_patch_size=16)
    add_discovery_flags(parser)
    add_image_flags(parser)
    add_launch_flags(parser)
    parser.add_argument("--preprocess", default=None, choices=PREPROCESS_MODES,
                        help="pad: zero padding to whole patches (LOST, main_tokencut.py); resize: LANCZOS resize "
                             "of each side to the nearest patch multiple (TokenCut's get_saliency.py). Default: "
                             "the benchmark's, else pad.")
    parser.add_argument("--refine", action="store_true",
                        help="Also refine each mask at pixel level as TokenCut's get_saliency.py does (bilateral "
                             "solver): refined.npy (soft), refined_masks.npy, refined.png, refined boxes in objects.json.")
    parser.add_argument("--benchmark", default=None, choices=DISCOVERY_BENCHMARKS,
                        help="Run a discovery benchmark under --data_path: its images, ground truth, "
                             "preprocessing and metrics (docs/discovery-benchmarks.md).")
    parser.add_argument("--data_path", default=None, type=str,
                        help="--benchmark: the root holding ECSSD/, DUTS_Test/, DUT_OMRON/, VOC2007/, VOC2012/, "
                             "COCO/ and coco_20k_filenames.txt.")
    parser.add_argument("--no_hard", action="store_true",
                        help="VOC ground truth: leave out truncated and difficult objects, and the images left "
                             "without any (LOST's --no_hard).")
    parser.add_argument("--export", default=None, choices=("coco",),
                        help="coco: also write OUTPUT_DIR/coco.json, the run's objects as COCO pseudo-labels "
                             "(RLE masks = masks.npy, boxes = boxes.json, score).")
    parser.add_argument("--resume", action="store_true",
                        help="Skip the images whose outputs in OUTPUT_DIR are complete (from an interrupted run with "
                             "the same flags); the scores and the export still count every image.")
    parser.add_argument("--gt_dir", default=None, type=str,
                        help="Ground truth: mask PNGs (binary, or palette with one object per index, 255 void) or "
                             "PASCAL VOC XML (also under Annotations/), found as eval.attention finds masks: "
                             "GT_DIR/<image's subfolder>/<stem> first, then GT_DIR/<stem> when no other image "
                             "has that stem. Gives Jaccard and CorLoc.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from eval.discover_run import run  # torch and the models load only now: --help and bad flags answer at once

    return run_launched(args, lambda info, say: run(args, info),
                        interrupted="the outputs written so far are complete (files are written whole); --resume "
                                    "continues")


if __name__ == "__main__":
    raise SystemExit(main())
