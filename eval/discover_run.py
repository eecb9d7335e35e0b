"""The work of `python -m eval.discover` (eval/discover.py holds its flags): objects found per image, read back,
scored and exported. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dino_seg.cli import check_output_dir
from dino_seg.distributed import DistInfo
from dino_seg.coco_export import CocoExport
from dino_seg.discovery import discover, extract_features
from dino_seg.discovery_data import load_benchmark
from dino_seg.discovery_io import is_complete, read_objects, write_discovery, write_objects, write_refinement
from dino_seg.discovery_scores import STAGES, DiscoveryScores, GroundTruth, ground_truth
from dino_seg.errors import UserError
from dino_seg.files import save_text
from dino_seg.groundtruth import ground_truth_files
from dino_seg.images import ImageError, load_image
from dino_seg.refine import refine_objects
from dino_seg.sharding import GlobalCounter, gather_to_main, shard_indices
from eval.common import collect_images, discovery_kwargs, each_image, load_from_args, output_folders

COCO_FILE = "coco.json"


def _ground_truth(args: argparse.Namespace, images: list[Path], root: Path
                  ) -> tuple[dict[Path, Callable[[], GroundTruth]], str | None]:
    """Each image's ground truth (read when scored) from --benchmark or --gt_dir, and the benchmark's
    preprocessing; UserError names the flag and the expected layout."""
    if args.benchmark:
        bench, items = load_benchmark(args.benchmark, args.data_path, args.no_hard)
        if bench.kind == "saliency":
            return {it.image: partial(ground_truth, it.gt_mask) for it in items}, bench.preprocess
        return {it.image: partial(GroundTruth, it.gt_boxes) for it in items}, bench.preprocess
    if args.gt_dir is None:
        return {}, None
    gt_dir = Path(args.gt_dir)
    if not gt_dir.is_dir():
        raise UserError(f"--gt_dir {gt_dir}: no such folder")
    files = ground_truth_files(gt_dir, images, root, xml=True)
    if not any(files.values()):
        raise UserError(f"--gt_dir {gt_dir}: no mask PNG or VOC XML named like any of the {len(images)} image(s)")
    return {p: partial(ground_truth, f, args.no_hard) for p, f in files.items() if f is not None}, None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def report_scores(scores: DiscoveryScores, output_dir: Path, provenance: dict) -> int:
    """Write scores.csv and summary.json and print the blocks; 2 when nothing was scored."""
    if not len(scores):
        print("error: no image could be scored against its ground truth", file=sys.stderr)
        return 2
    save_text(output_dir / "scores.csv", scores.table())
    summary = {**provenance, **scores.summary()}
    save_text(output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    for stage in STAGES:
        if stage in summary:
            print(f"{stage}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary[stage].items()) +
                  f" (%) over {summary['images']} image(s)")
    print(f"scores written to {output_dir / 'scores.csv'} and {output_dir / 'summary.json'}")
    return 0


def run(args: argparse.Namespace, info: DistInfo | None = None) -> int:
    """Under torchrun or SLURM (`info`), every rank discovers the objects of its share of the images (every
    world_size-th); rank 0 alone reads them back, scores them and writes summary.json."""
    import torch

    info = info or DistInfo(0, 1, 0, torch.device("cpu"), None, "none")
    discovery_kwargs(args)  # the discovery flags are checked before the weights load
    if args.benchmark and not args.data_path:
        raise UserError(f"--benchmark {args.benchmark}: give its root with --data_path ROOT")
    if args.benchmark:
        images, root = [], Path(args.data_path)
        gt, bench_preprocess = _ground_truth(args, images, root)
        images = list(gt)
    else:
        images, root = collect_images(args.image_path)
        gt, bench_preprocess = _ground_truth(args, images, root)
    check_output_dir(args.output_dir)
    preprocess = args.preprocess or bench_preprocess or "pad"
    # The inputs are checked before the weights are loaded (or downloaded): a wrong path fails at once.
    model, description = load_from_args(args, info.device)
    if info.is_main:
        print(f"weights: {description}; method: {args.method}; preprocess: {preprocess}" +
              (f"; benchmark: {args.benchmark} ({len(images)} images)" if args.benchmark else "") +
              (f"; {info.world_size} processes ({info.backend})" if info.distributed else ""))

    output_dir = Path(args.output_dir)
    folders = output_folders(images, root)
    finished = {p for p in images if args.resume and is_complete(output_dir / folders[p], args.refine)}
    if args.resume and info.is_main:
        print(f"resume: {len(finished)} of {len(images)} image(s) already done in {output_dir}")
    todo = [p for p in images if p not in finished]
    mine = [todo[i] for i in shard_indices(len(todo), info.rank, info.world_size)]
    part = discover_images(model, mine, len(todo), root, folders, preprocess, args, info)
    parts = gather_to_main(part, info.rank, info.world_size)
    if parts is None:
        return 0  # ranks other than 0: rank 0 reads every image's objects back and scores them
    made = {k: v for part in parts for k, v in part["made"].items()}
    done = sum(part["done"] for part in parts)
    try:  # images finished by an earlier run keep the rank recorded then
        earlier = json.loads((output_dir / "summary.json").read_text()).get("ranks", {}) if args.resume else {}
    except (OSError, ValueError, AttributeError):
        earlier = {}
    made = {**{k: v for k, v in earlier.items() if isinstance(v, int)}, **made}
    finished |= {p for p in images if p.relative_to(root).as_posix() in made}
    skipped = len(images) - len(finished)
    print(f"wrote the objects of {done} image(s) to {output_dir}" +
          (f" ({skipped} unreadable file(s) skipped)" if skipped else ""))
    provenance = {"method": args.method, "weights": description, "benchmark": args.benchmark,
                  "preprocess": preprocess, "refine": args.refine, "n_objects": args.n_objects,
                  "world_size": info.world_size,
                  "ranks": {p.relative_to(root).as_posix(): made[p.relative_to(root).as_posix()]
                            for p in images if p.relative_to(root).as_posix() in made}}
    return score_and_export([p for p in images if p in finished], root, folders, gt, args, provenance)


def discover_images(model, mine: list[Path], total: int, root: Path, folders: dict[Path, Path], preprocess: str,
                    args: argparse.Namespace, info: DistInfo) -> dict:
    """This rank's images (of `total` over all ranks): objects found and written per image (objects.json last, so
    that a written objects.json means a complete image); which rank made which image returned for rank 0."""
    kwargs = discovery_kwargs(args)

    def work(path: Path):
        image = load_image(path)
        features = extract_features(model, image, tuple(args.resize) if args.resize else None,
                                    preprocess_mode=preprocess)
        return image, features, discover(features, args.method, score_objects=True, **kwargs)

    made: dict[str, int] = {}  # image -> the rank that wrote its objects
    images = each_image(mine, work, args.method, enabled=info.is_main, counter=GlobalCounter("discover_images"),
                        total=total)
    for path, (image, features, result) in images:
        out_dir, pixels = Path(args.output_dir) / folders[path], np.asarray(image)
        write_discovery(out_dir, pixels, features, result)
        refined = refine_objects(pixels, result.masks) if args.refine else None
        if refined is not None:
            write_refinement(out_dir, refined)
        write_objects(out_dir, result, refined)  # last: the image is complete
        made[path.relative_to(root).as_posix()] = info.rank
        if features.note:
            tqdm.write(f"note: {path.name}: {features.note}")
    return {"made": made, "done": len(made)}


def score_and_export(finished: list[Path], root: Path, folders: dict[Path, Path],
                     gt: dict[Path, Callable[[], GroundTruth]],
                     args: argparse.Namespace, provenance: dict) -> int:
    """Rank 0: scores and the COCO export read every finished image's objects back from its files, so that a
    resumed run counts the images of earlier runs exactly as it counts its own."""
    output_dir = Path(args.output_dir)
    scores = DiscoveryScores(refined=args.refine)
    export = CocoExport() if args.export == "coco" else None
    for path in finished:
        saved = read_objects(output_dir / folders[path], args.refine)
        rel = path.relative_to(root).as_posix()
        if export is not None:
            export.add_image(rel, saved.masks, saved.boxes, saved.scores)
        if path not in gt:
            if gt:
                tqdm.write(f"warning: no ground truth for {rel}; not scored")
            continue
        try:
            scores.add(rel, gt[path](), saved.masks, saved.boxes, saved.refined)
        except ImageError as err:
            tqdm.write(f"warning: {err}; not scored")
    if export is not None:
        print(f"COCO pseudo-labels of {len(export.images)} image(s) written to "
              f"{export.write(output_dir / COCO_FILE)}")
    if gt:
        return report_scores(scores, output_dir, provenance)
    save_text(output_dir / "summary.json", json.dumps(provenance, indent=2) + "\n")
    return 0
