"""The work of `python -m eval.knn` (eval/knn.py holds its flags): features of both splits, the weighted vote and
knn.json. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dino_seg.cli import check_output_dir
from dino_seg.errors import UserError
from dino_seg.files import save_text
from dino_seg.image_folder import LabelledDataset, eval_transform, find_splits
from dino_seg.knn import (Features, check_feature_width, extract_features, knn_accuracies, load_features,
                          save_features)
from dino_seg.models import model_name
from eval.common import load_from_args, progress

RESULTS = "knn.json"


def extract_splits(args: argparse.Namespace, device: torch.device, is_main: bool) -> tuple[Features | None, dict]:
    """Features of both splits (rank 0; None elsewhere) and facts about the model and data."""
    train, val = find_splits(args.data_path)
    too_large = [k for k in args.nb_knn if k > len(train.samples) or k < 1]
    if too_large:
        raise UserError(f"--nb_knn {too_large[0]}: k must be between 1 and the {len(train.samples)} "
                         f"training images of {train.root}")
    model, description = load_from_args(args, device)
    transform = eval_transform(args.resize_size, args.crop_size)
    feats = {}
    for name, split in (("train", train), ("val", val)):
        def bar(loader, name=name):
            return progress(loader, f"Features {name}", enabled=is_main)
        feats[name] = extract_features(model, LabelledDataset(split, transform), batch_size=args.batch_size_per_gpu,
                                       num_workers=args.num_workers, device=device, wrap=bar)
    info = {"model": model_name(model), "weights": description, "num_classes": len(train.classes)}
    if feats["train"] is None:
        return None, info
    return Features(feats["train"], feats["val"], train.labels, val.labels), info


def run(args: argparse.Namespace, device: torch.device, is_main: bool, say) -> int:
    started = time.perf_counter()
    check_output_dir(args.output_dir)
    check_output_dir(args.dump_features, "--dump_features")
    if args.load_features:
        # The dump is checked before any weights are loaded (or downloaded).
        features = load_features(args.load_features) if is_main else None
        if features is not None and (args.pretrained_weights or args.arch):  # a model named along the dump
            model, _ = load_from_args(args, "cpu")
            check_feature_width(features, int(model.embed_dim), args.load_features)
        info = {"model": None, "weights": f"features of {args.load_features}", "num_classes": None}
    else:
        features, info = extract_splits(args, device, is_main)
    extract_s = time.perf_counter() - started
    if not is_main:
        return 0
    if args.dump_features:
        save_features(features, args.dump_features)
        say(f"Features written to {args.dump_features}")
    vote_device = device if (args.use_cuda or device.type != "cuda") else torch.device("cpu")
    features = features.to(vote_device)
    num_classes = info["num_classes"] or int(max(features.train_labels.max(), features.test_labels.max())) + 1
    say(f"Features are ready ({features.train.shape[0]} train, {features.test.shape[0]} val images, "
        f"{features.train.shape[1]}-d, {num_classes} classes).\nStart the k-NN classification.")
    results, vote_s = {}, {}
    for k in args.nb_knn:
        t0 = time.perf_counter()
        top1, top5 = knn_accuracies(features, [k], args.temperature, num_classes=num_classes)[k]
        vote_s[str(k)] = time.perf_counter() - t0
        results[k] = (top1, top5)
        say(f"{k}-NN classifier result: Top1: {top1}, Top5: {top5}")
    say("\n| k | top-1 (%) | top-5 (%) |\n|---:|---:|---:|\n" +
        "\n".join(f"| {k} | {t1:.2f} | {t5:.2f} |" for k, (t1, t5) in results.items()))
    if args.output_dir:
        record = {str(k): {"top1": t1, "top5": t5} for k, (t1, t5) in results.items()}
        record.update({
            "args": vars(args), "model": info["model"], "weights": info["weights"],
            "train_images": int(features.train.shape[0]), "val_images": int(features.test.shape[0]),
            "num_classes": num_classes, "feature_dim": int(features.train.shape[1]),
            "timings_s": {"features": extract_s, "vote": vote_s, "total": time.perf_counter() - started},
        })
        path = Path(args.output_dir) / RESULTS
        save_text(path, json.dumps(record, indent=2, default=str) + "\n")
        say(f"Results written to {path}")
    return 0
