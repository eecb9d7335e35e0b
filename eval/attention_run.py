"""The work of `python -m eval.attention` (eval/attention.py holds its flags): maps, masks and overlays per
image, scores, register shares and summary. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_seg import tables
from dino_seg.attention import attention_results, masks_to_image_size, preprocess, preprocessed_size, resized_size
from dino_seg.backbones import as_backbone
from dino_seg.batching import batched
from dino_seg.cli import check_output_dir
from dino_seg.distributed import DistInfo
from dino_seg.errors import UserError
from dino_seg.files import remove_stale_temp, save_npy, save_png, save_text
from dino_seg.groundtruth import ground_truth_files, load_mask
from dino_seg.images import ImageError, list_images, load_image
from dino_seg.masks import mask_iou
from dino_seg.models import is_vit
from dino_seg.precision import autocast, check_precision
from dino_seg.sharding import GlobalCounter, gather_to_main, shard_indices
from dino_seg.viz import attention_panels
from eval.common import load_from_args, output_folders


def _load(path: Path, image_size: tuple[int, ...], patch_size: int):
    """(preprocessed image (3, H, W), original (W, H)): what a loader worker makes of one file."""
    # A huge JPEG may be decoded reduced, as long as that still covers the size the model gets.
    need = image_size * 2 if len(image_size) == 1 else image_size[::-1]
    image = load_image(path, min_size=(need[0], need[1]))
    return preprocess(image, image_size, patch_size)[0], image.size


def _size_key(path: Path, image_size: tuple[int, ...], patch_size: int) -> tuple[int, int] | None:
    """The preprocessed size of an image from its header (EXIF rotation included), without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees on load
                w, h = h, w
    except Exception:  # noqa: BLE001 -- an unreadable file is reported when the loader opens it
        return None
    return preprocessed_size((w, h), image_size, patch_size)


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


@dataclass
class Inputs:
    """The images of a run, where each one's outputs go, and their ground truth: checked before any weights load."""

    image_path: Path
    images: list[Path]
    folders: dict[Path, Path]
    gt_dir: Path | None
    gt_files: dict[Path, Path | None]

    def name(self, path: Path) -> str:
        return path.name if self.image_path == path else path.relative_to(self.image_path).as_posix()


def check_inputs(args: argparse.Namespace) -> Inputs:
    """The inputs are checked before the weights are loaded (or downloaded): a wrong path fails at once."""
    image_path = Path(args.image_path)
    if image_path.is_dir():
        images = list_images(image_path, recursive=True)
        if not images:
            raise UserError(f"--image_path {image_path}: no image files in this folder")
        folders = output_folders(images, image_path)
    elif image_path.exists():
        images = [image_path]
        folders = output_folders(images, None)
    else:
        raise UserError(f"--image_path {image_path}: no such file or folder")
    gt_dir = Path(args.gt_dir) if args.gt_dir else None
    if gt_dir is not None and not gt_dir.is_dir():
        raise UserError(f"--gt_dir {gt_dir}: no such folder")
    root = image_path if image_path.is_dir() else image_path.parent
    gt_files = ground_truth_files(gt_dir, images, root) if gt_dir is not None else {}
    if not 0 <= args.threshold <= 1:
        raise UserError(f"--threshold: expected a share of the mass in [0, 1], got {args.threshold}")
    check_output_dir(Path(args.output_dir))
    if args.batch_size < 1:
        raise UserError(f"--batch_size: expected at least 1, got {args.batch_size}")
    return Inputs(image_path, images, folders, gt_dir, gt_files)


def run(args: argparse.Namespace, info: DistInfo | None = None) -> int:
    """Under torchrun or SLURM (`info`), every rank computes its share of the images (every world_size-th) and
    rank 0 alone writes the score tables and summary.json."""
    import torch

    info = info or DistInfo(0, 1, 0, torch.device("cpu"), None, "none")
    inputs = check_inputs(args)
    check_precision(args.precision, info.device)
    model, description = load_from_args(args, info.device)
    if not is_vit(model):
        raise UserError("--arch resnet50 has no self-attention; use a ViT")
    if info.is_main:
        print(f"weights: {description}" + (f" (x{info.world_size} processes, {info.backend})" if info.distributed
                                           else ""))
    output_dir = Path(args.output_dir)
    mine = [inputs.images[i] for i in shard_indices(len(inputs.images), info.rank, info.world_size)]
    # Temporary files of a run killed mid-write (kill -9) are never completed: remove them from the folders this
    # run writes (not the whole tree under OUTPUT_DIR, which defaults to the working directory).
    stale = remove_stale_temp(output_dir, recursive=False) if info.is_main else []
    for path in mine:
        stale += remove_stale_temp(output_dir / inputs.folders[path], recursive=False)
    if stale:
        print(f"removed {len(stale)} stale temporary file(s) of an interrupted run")
    part = attend_images(model, mine, inputs, args, info)
    parts = gather_to_main(part, info.rank, info.world_size)
    if parts is None:
        return 0  # ranks other than 0: rank 0 writes the tables and the summary
    return write_summary(parts, inputs, args, info, description)


def attend_images(model, mine: list[Path], inputs: Inputs, args: argparse.Namespace, info: DistInfo) -> dict:
    """This rank's images through the model: maps and masks written per image; score rows, register shares,
    skipped files and who made what returned for rank 0 to merge."""
    rows: list[dict[str, float | str]] = []
    shares: list[dict[str, float | str]] = []  # register share per image and head (models with registers)
    failed: dict[str, str] = {}  # unreadable images: name -> reason
    made: dict[str, int] = {}  # image name -> the rank that made its outputs
    heads = 0
    patch = as_backbone(model).patch_size
    image_size = tuple(args.image_size)
    total = len(inputs.images)
    counter = GlobalCounter("attention_images")
    loader = batched(mine, partial(_load, image_size=image_size, patch_size=patch),
                     [_size_key(p, image_size, patch) for p in mine], batch_size=args.batch_size,
                     num_workers=args.num_workers)
    with tqdm(total=total, desc="images", unit="img", file=sys.stderr, disable=total == 1 or not info.is_main) as bar:
        for batch in loader:
            for index, reason in batch.failed.items():
                if total == 1:
                    raise UserError(reason)
                tqdm.write(f"warning: skipped {reason}")
                failed[inputs.name(mine[index])] = reason
                bar.update(counter.add() - bar.n)
            if batch.tensor is None:
                continue
            with autocast(args.precision, info.device):
                results = attention_results(model, batch.tensor)
            for index, result, original_wh in zip(batch.indices, results, batch.extras):
                path = mine[index]
                masks = write_outputs(Path(args.output_dir) / inputs.folders[path], result, args.threshold)
                heads = len(masks) - 1
                name = inputs.name(path)
                made[name] = info.rank
                bar.update(counter.add() - bar.n)
                if result.register_share is not None:
                    shares.append({"image": name, **{f"head{j}": float(v) for j, v in enumerate(result.register_share)},
                                   "mean_head": float(result.register_share.mean())})
                if inputs.gt_dir is not None:
                    row = score_masks(name, masks, original_wh, args.image_size, inputs.gt_files[path], inputs.gt_dir)
                    rows += [row] if row is not None else []
        while info.is_main and info.distributed and counter.value() < total:  # the other ranks' images
            bar.update(counter.value() - bar.n)
            time.sleep(0.2)
        bar.update(counter.value() - bar.n)
    return {"rows": rows, "shares": shares, "failed": failed, "made": made, "heads": heads}


def write_summary(parts: list[dict], inputs: Inputs, args: argparse.Namespace, info: DistInfo,
                  description: str) -> int:
    """Rank 0: every rank's rows merged in image order (whatever the split), summary.json and the tables."""
    output_dir = Path(args.output_dir)
    order = {inputs.name(p): i for i, p in enumerate(inputs.images)}
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: order[r["image"]])
    shares = sorted((r for part in parts for r in part["shares"]), key=lambda r: order[r["image"]])
    failed = {k: v for part in parts for k, v in part["failed"].items()}
    made = dict(sorted(((k, v) for part in parts for k, v in part["made"].items()), key=lambda kv: order[kv[0]]))
    heads = max(part["heads"] for part in parts)
    skipped = len(failed)
    save_text(output_dir / "summary.json", json.dumps({
        "world_size": info.world_size, "batch_size": args.batch_size, "precision": args.precision,
        "weights": description, "images": {name: {"rank": rank} for name, rank in made.items()},
        "skipped": failed}, indent=2) + "\n")
    done = len(inputs.images) - skipped
    print(f"wrote attention maps and masks of {done} image(s) to {output_dir}" +
          (f" ({skipped} unreadable file(s) skipped)" if skipped else ""))
    if shares:
        report_register_shares(shares, output_dir)
    return 0 if inputs.gt_dir is None else report_scores(rows, heads, inputs.gt_dir, args.threshold, output_dir)


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
    """register_share.csv, and each head's mean share over the images."""
    save_text(output_dir / "register_share.csv", share_table(shares))
    mean = {k: float(np.mean([r[k] for r in shares])) for k in shares[0] if k != "image"}
    print("[CLS] attention on the registers (mean over images): " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))


def report_scores(rows: list[dict[str, float | str]], heads: int, gt_dir: Path, threshold: float,
                  output_dir: Path) -> int:
    """jaccard.csv and the mean Jaccard of each head and of the mean map; 2 when no image was scored."""
    if not rows:
        print(f"error: no image had a ground-truth mask in {gt_dir}", file=sys.stderr)
        return 2
    text = score_table(rows, heads=heads)
    save_text(output_dir / "jaccard.csv", text)
    mean = text.strip().splitlines()[-1].split(",")
    header = text.splitlines()[0].split(",")
    print(f"Jaccard at threshold {threshold} over {len(rows)} image(s):")
    for name, value in zip(header[1:], mean[1:]):
        print(f"  {name:>10}  {value}")
    print(f"scores written to {output_dir / 'jaccard.csv'}")
    return 0
