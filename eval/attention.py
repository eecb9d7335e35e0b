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
Input size: --image_size H W resizes to exactly H x W (multiples of the patch, 14 for DINOv2 and 16 for DINOv3,
are used as given); one value resizes the short side; the pixels past the last whole patch are then cropped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn
from tqdm import tqdm

from dino_seg import tables
from dino_seg.attention import AttentionResult, compute_attention, masks_to_image_size, resized_size
from dino_seg.cli import check_output_dir, run_command
from dino_seg.device import pick_device
from dino_seg.errors import UserError
from dino_seg.files import remove_stale_temp, save_npy, save_png, save_text
from dino_seg.groundtruth import ground_truth_files, load_mask
from dino_seg.images import ImageError, load_image
from dino_seg.masks import mask_iou
from dino_seg.models import is_vit
from dino_seg.viz import attention_panels
from eval.common import add_image_flags, add_weight_flags, collect_images, each_image, load_from_args, output_folders


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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps.")
    return parser


def write_outputs(out_dir: Path, result, threshold: float) -> np.ndarray:
    """Write one image's maps, masks and overlays; return the masks (heads + mean, H, W)."""
    masks = result.masks(threshold, include_mean=True)  # (heads + 1, H, W)
    save_png(out_dir / "img.png", result.image)
    save_npy(out_dir / "attention.npy", result.maps.astype(np.float32))
    save_npy(out_dir / "masks.npy", masks[:-1])
    heat, overlays = attention_panels(result.image, result.pixel_maps(), masks)
    for j, image in enumerate(heat):
        save_png(out_dir / f"attn-head{j}.png", image)
    for j, image in enumerate(overlays):
        name = "mean" if j == len(overlays) - 1 else f"head{j}"
        save_png(out_dir / f"mask_th{threshold}_{name}.png", image)
    return masks


def score_table(rows: list[dict[str, float | str]], heads: int) -> str:
    """Scores as CSV text: one row per image and a final mean row."""
    columns = ["image"] + [f"head{j}" for j in range(heads)] + ["best_head", "mean_map"]
    return tables.score_table(rows, columns, mean_row=True)


def share_table(rows: list[dict[str, float | str]]) -> str:
    """Register shares as CSV text: one row per image (per head and their mean) and a final mean row."""
    return tables.score_table(rows, list(rows[0]), mean_row=True)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_command(lambda: run(args), interrupted="the outputs written so far are complete (files are written whole)")


def run(args: argparse.Namespace) -> int:
    # The inputs are checked before the weights are loaded (or downloaded): a wrong path fails at once.
    images, root = collect_images(args.image_path)
    folders = output_folders(images, root)
    gt_dir = Path(args.gt_dir) if args.gt_dir else None
    if gt_dir is not None and not gt_dir.is_dir():
        raise UserError(f"--gt_dir {gt_dir}: no such folder")
    gt_files = ground_truth_files(gt_dir, images, root) if gt_dir is not None else {}
    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold: expected a share of the mass in [0, 1], got {args.threshold}")
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir)
    model, description = load_from_args(args, pick_device(args.device))
    if not is_vit(model):
        raise UserError("--arch resnet50 has no self-attention; use a ViT")
    print(f"weights: {description}")
    # Temporary files of a run killed mid-write (kill -9) are never completed: remove them from the folders this
    # run writes (not the whole tree under OUTPUT_DIR, which defaults to the working directory).
    stale = remove_stale_temp(output_dir, recursive=False)
    for folder in sorted(set(folders.values())):
        stale += remove_stale_temp(output_dir / folder, recursive=False)
    if stale:
        print(f"removed {len(stale)} stale temporary file(s) of an interrupted run")

    rows: list[dict[str, float | str]] = []
    shares: list[dict[str, float | str]] = []  # register share per image and head (models with registers)
    heads = done = 0
    for path, (image, result) in each_image(images, lambda p: _attention(model, p, args.image_size), "images"):
        done += 1
        masks = write_outputs(output_dir / folders[path], result, args.threshold)  # (heads + 1, H, W)
        heads = len(masks) - 1
        name = path.relative_to(root).as_posix()
        if result.register_share is not None:
            shares.append({"image": name, **{f"head{j}": float(v) for j, v in enumerate(result.register_share)},
                           "mean_head": float(result.register_share.mean())})
        if gt_dir is not None:
            row = score_masks(name, masks, image.size, args.image_size, gt_files[path], gt_dir)
            rows += [row] if row is not None else []

    print(f"wrote attention maps and masks of {done} image(s) to {output_dir}" +
          (f" ({len(images) - done} unreadable file(s) skipped)" if done < len(images) else ""))
    if shares:
        report_register_shares(shares, output_dir)
    return 0 if gt_dir is None else report_scores(rows, heads, gt_dir, args.threshold, output_dir)


def _attention(model: nn.Module, path: Path, image_size: list[int]) -> tuple[Image.Image, AttentionResult]:
    # A huge JPEG may be decoded reduced, as long as that still covers the size the model gets.
    need = image_size * 2 if len(image_size) == 1 else image_size[::-1]
    image = load_image(path, min_size=(need[0], need[1]))
    return image, compute_attention(model, image, tuple(image_size))


def score_masks(name: str, masks: np.ndarray, size_wh: tuple[int, int], image_size: list[int],
                gt_path: Path | None, gt_dir: Path) -> dict[str, float | str] | None:
    """Jaccard of each head's mask and of the mean map's against one image's ground truth, at the ground
    truth's own resolution (the masks go back through the crop and resize); None, with a warning, unscored."""
    if gt_path is None:
        tqdm.write(f"warning: no ground truth for {name} in {gt_dir}; not scored")
        return None
    try:
        fg, void = load_mask(gt_path)
    except ImageError as err:
        tqdm.write(f"warning: {err}; not scored")
        return None
    full = masks_to_image_size(masks, resized_size(size_wh, image_size), fg.shape)
    scores = [mask_iou(m, fg, void, empty=1.0) for m in full]
    return {"image": name, **{f"head{j}": s for j, s in enumerate(scores[:-1])},
            "best_head": max(scores[:-1]), "mean_map": scores[-1]}


def report_register_shares(shares: list[dict[str, float | str]], output_dir: Path) -> None:
    """register_share.csv, and the mean share of each head over the images."""
    save_text(output_dir / "register_share.csv", share_table(shares))
    mean = {k: float(np.mean([r[k] for r in shares])) for k in shares[0] if k != "image"}
    print("[CLS] attention on the registers (mean over images): " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))


def report_scores(rows: list[dict[str, float | str]], heads: int, gt_dir: Path, threshold: float,
                  output_dir: Path) -> int:
    """jaccard.csv and the mean Jaccard of each head and of the mean map; 2 when no image was scored."""
    if not rows:
        raise UserError(f"no image had a ground-truth mask in {gt_dir}")
    text = score_table(rows, heads=heads)
    save_text(output_dir / "jaccard.csv", text)
    mean = text.strip().splitlines()[-1].split(",")
    header = text.splitlines()[0].split(",")
    print(f"Jaccard at threshold {threshold} over {len(rows)} image(s):")
    for name, value in zip(header[1:], mean[1:]):
        print(f"  {name:>10}  {value}")
    print(f"scores written to {output_dir / 'jaccard.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
