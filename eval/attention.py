"""Self-attention maps and masks of a DINO ViT for an image or a folder of images.

    python -m eval.attention --pretrained_weights dino_vits8 --image_path photo.jpg --output_dir out
    python -m eval.attention --image_path images/ --gt_dir masks/ --threshold 0.6 --output_dir out

For each image, OUTPUT_DIR/<path under --image_path without suffix>/ (OUTPUT_DIR/<stem>/ for a single
file; `name_<suffix>` when two images differ only by suffix) gets img.png, attn-head{j}.png (heat maps),
mask_th{t}_head{j}.png and mask_th{t}_mean.png (overlays with contours), attention.npy
(float32, heads x h x w) and masks.npy (bool, heads x H x W at the cropped size). With --gt_dir,
the masks are scored by Jaccard against ground-truth masks matched by file stem.

Any DINO generation: DINO, DINOv2 (with or without registers) and DINOv3 weights are recognised from their keys.
The maps are the last block's [CLS] query row, softmax over every token (registers included; DINOv3 with RoPE
applied as its attention does), restricted to the patches. For a model with registers, register_share.csv
gives, per image and head, the share of the [CLS] attention that goes to the registers.
Folders: --batch_size images of equal preprocessed size per forward pass, decoded by --num_workers loader
processes; --precision bf16/fp16 autocast (fp32, the default, is exact). Under torchrun or SLURM the images are
split over the processes (every world_size-th image); rank 0 writes the tables and summary.json (world_size, and
the rank that made each image's outputs). The outputs equal those of one process.

Input size: --image_size H W resizes to exactly H x W (multiples of the patch, 14 for DINOv2 and 16 for DINOv3,
are used as given); one value resizes the short side; the pixels past the last whole patch are then cropped.
"""

from __future__ import annotations

import argparse

from dino_seg.names import PRECISIONS
from eval.common import add_image_flags, add_launch_flags, add_weight_flags, run_launched


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m eval.attention", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_weight_flags(parser, reference_patch_size=8)
    add_image_flags(parser)
    parser.add_argument("--image_size", default=(480, 480), type=int, nargs="+",
                        help="Resize to H W (used exactly when multiples of the patch); a single value resizes the "
                             "short side and keeps the aspect ratio; pixels past the last whole patch are cropped.")
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="Share of the attention mass the masks keep (the paper's 0.6).")
    parser.add_argument("--gt_dir", default=None, type=str,
                        help="Folder of ground-truth masks (binary or palette PNGs) matched by file stem: "
                             "score the masks by Jaccard.")
    parser.add_argument("--batch_size", default=1, type=int,
                        help="Images per forward pass; images of the same preprocessed size are batched together.")
    parser.add_argument("--num_workers", default=0, type=int,
                        help="Loader processes decoding and resizing images ahead of the model (0: in this process).")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (exact, the default); bf16 (CUDA, or a CPU with bfloat16) or fp16 (CUDA) autocast.")
    add_launch_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from eval.attention_run import run  # torch and the models load only now: --help and bad flags answer at once

    return run_launched(args, lambda info, say: run(args, info),
                        interrupted="the outputs written so far are complete (files are written whole)")


if __name__ == "__main__":
    raise SystemExit(main())
