"""Unsupervised object discovery (attention threshold, LOST, TokenCut, MaskCut) on an image or a folder.

    python -m eval.discover --pretrained_weights dino_deitsmall16_pretrain.pth --image_path photo.jpg
    python -m eval.discover --method lost --image_path VOC2007/JPEGImages --gt_dir VOC2007/Annotations

For each image, OUTPUT_DIR/<image path relative to --image_path, without suffix>/ (as eval.attention) gets patches.npy
(bool, objects x h x w), masks.npy (bool, objects x H x W at the original size), scores.npy (float32,
h x w), boxes.json ([x0, y0, x1, y1] per object, original-image pixels), objects.png (masks and boxes)
and scores.png (the score map). With --gt_dir (mask PNGs or VOC XML, in the image's subfolder first), scores.csv gets
each image's best-object Jaccard and CorLoc hit.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_seg.device import pick_device
from dino_seg.discovery import DiscoveryResult, discover, extract_features
from dino_seg.discovery_io import write_discovery
from dino_seg.files import save_text
from dino_seg.groundtruth import ground_truth_files, read_gt_objects, read_voc_boxes
from dino_seg.images import ImageError, load_image
from dino_seg.localization import best_jaccard, corloc_hit
from dino_seg.masks import mask_extent
from dino_seg.weights import WeightsError
from eval.common import (add_discovery_flags, add_weight_flags, collect_images, discovery_kwargs, each_image,
                         load_from_args, output_folders)

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "assets" / "images" / "blackswan.jpg"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("python -m eval.discover", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_weight_flags(parser, reference_patch_size=16)
    add_discovery_flags(parser)
    parser.add_argument("--image_path", default=str(DEFAULT_IMAGE), type=str, help="An image file or a folder of images.")
    parser.add_argument("--output_dir", default=".", help="Where to write the results.")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps.")
    parser.add_argument("--refine", action="store_true",
                        help="Refine masks at pixel level with TokenCut's bilateral solver (OpenCV contrib).")
    parser.add_argument("--gt_dir", default=None, type=str,
                        help="Ground truth: mask PNGs (binary, or palette with one object per index, 255 void) or "
                             "PASCAL VOC XML (also under Annotations/), found as eval.attention finds masks: "
                             "GT_DIR/<image's subfolder>/<stem> first, then GT_DIR/<stem> when no other image "
                             "has that stem. Gives Jaccard and CorLoc.")
    return parser


def write_image_results(out_dir: Path, image, features, result: DiscoveryResult, refine: bool = False) -> None:
    """Write one image's outputs, the masks first refined at pixel level if asked."""
    pixels = np.asarray(image)
    if refine:
        from dino_seg.refine import refine_masks  # imported only when asked

        result.masks = refine_masks(pixels, result.masks)
    write_discovery(out_dir, pixels, features, result)


def score_image(result: DiscoveryResult, gt_path: Path) -> dict[str, float | str]:
    """Best-object Jaccard (mask ground truth only) and CorLoc hit of one image."""
    if gt_path.suffix.lower() == ".xml":
        return {"jaccard": "", "corloc": float(corloc_hit(result.boxes, read_voc_boxes(gt_path)))}
    objects, void = read_gt_objects(gt_path)
    if objects and objects[0].shape != result.masks.shape[1:]:
        raise ImageError(f"{gt_path}: mask of {objects[0].shape[::-1]} pixels, the image is "
                         f"{result.masks.shape[2:0:-1]}")
    fg = np.logical_or.reduce(objects) if objects else np.zeros(result.masks.shape[1:], dtype=bool)
    return {"jaccard": best_jaccard(result.masks, fg, void),
            "corloc": float(corloc_hit(result.boxes, [mask_extent(o) for o in objects]))}


def score_table(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "objects", "jaccard", "corloc"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def report_scores(rows: list[dict], gt_dir: Path, output_dir: Path) -> int:
    """Write scores.csv and print CorLoc and the mean best-object Jaccard; 2 when nothing was scored."""
    if not rows:
        print(f"error: no image could be scored against {gt_dir}", file=sys.stderr)
        return 2
    save_text(output_dir / "scores.csv", score_table(rows))
    jac = [r["jaccard"] for r in rows if r["jaccard"] != ""]
    corloc = 100 * float(np.mean([r["corloc"] for r in rows]))
    print(f"CorLoc: {corloc:.1f}% over {len(rows)} image(s)" +
          (f"; mean best-object Jaccard: {np.mean(jac):.4f} over {len(jac)} mask(s)" if jac else ""))
    print(f"scores written to {output_dir / 'scores.csv'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        kwargs = discovery_kwargs(args)
        images, root = collect_images(args.image_path)
        device = pick_device(args.device)
        model, description = load_from_args(args, device)
    except (WeightsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gt_dir = Path(args.gt_dir) if args.gt_dir else None
    gt_files: dict[Path, Path | None] = {}
    if gt_dir is not None:
        if not gt_dir.is_dir():
            print(f"error: --gt_dir {gt_dir}: no such folder", file=sys.stderr)
            return 2
        gt_files = ground_truth_files(gt_dir, images, root, xml=True)
        if not any(gt_files.values()):
            print(f"error: --gt_dir {gt_dir}: no mask PNG or VOC XML named like any of the {len(images)} "
                  "image(s)", file=sys.stderr)
            return 2
    print(f"weights: {description}; method: {args.method}")

    def work(path: Path):
        image = load_image(path)
        features = extract_features(model, image, tuple(args.resize) if args.resize else None)
        return image, features, discover(features, args.method, **kwargs)

    output_dir = Path(args.output_dir)
    folders = output_folders(images, root)
    rows: list[dict] = []
    done = 0
    try:
        for path, (image, features, result) in each_image(images, work, args.method):
            done += 1
            write_image_results(output_dir / folders[path], image, features, result,
                                args.refine)
            if features.note:
                tqdm.write(f"note: {path.name}: {features.note}")
            gt_path = gt_files.get(path)
            if gt_path is None:
                if gt_dir is not None:
                    tqdm.write(f"warning: no ground truth for {path.name} in {gt_dir}; not scored")
                continue
            try:
                rows.append({"image": str(path.relative_to(root)), "objects": len(result.boxes),
                             **score_image(result, gt_path)})
            except ImageError as err:
                tqdm.write(f"warning: {err}; not scored")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    skipped = f" ({len(images) - done} unreadable file(s) skipped)" if done < len(images) else ""
    print(f"wrote the objects of {done} image(s) to {output_dir}{skipped}")
    return 0 if gt_dir is None else report_scores(rows, gt_dir, output_dir)

if __name__ == "__main__":
    raise SystemExit(main())
