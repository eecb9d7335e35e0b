"""Weighted k-NN classification on frozen features, the protocol and flags of the reference eval_knn.py.

    python -m eval.knn --pretrained_weights dino_vits16 --data_path /path/to/imagenet --output_dir out
    torchrun --nproc_per_node 4 -m eval.knn --data_path /path/to/imagenet --dump_features feats
    python -m eval.knn --load_features feats --nb_knn 20

DATA_PATH is an ImageFolder root with train/<class>/ and val/<class>/. Prints the reference's lines
(`{k}-NN classifier result: Top1: ..., Top5: ...`) and a table; with --output_dir, knn.json holds
{"<k>": {"top1": %, "top5": %}, ...} plus the arguments, data set sizes, class count and timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dino_seg.cli import check_output_dir
from dino_seg.errors import UserError
from dino_seg.files import save_text
from dino_seg.flags import bool_flag
from dino_seg.image_folder import LabelledDataset, eval_transform, find_splits
from dino_seg.knn import (Features, check_feature_width, extract_features, knn_accuracies, load_features,
                          save_features)
from dino_seg.models import model_name
from eval.common import (add_image_folder_flags, add_launch_flags, add_weight_flags, load_from_args, progress,
                         run_launched)

RESULTS = "knn.json"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m eval.knn", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch_size_per_gpu", default=128, type=int, help="Images per process and batch.")
    p.add_argument("--nb_knn", default=[10, 20, 100, 200], nargs="+", type=int,
                   help="Numbers of nearest neighbours to use; 20 is usually the best.")
    p.add_argument("--temperature", default=0.07, type=float, help="Temperature of the neighbours' weights "
                   "exp(similarity / T).")
    add_weight_flags(p, reference_patch_size=16)
    p.add_argument("--use_cuda", default=True, type=bool_flag,
                   help="Keep the features and vote on the GPU when --device is CUDA (set false on GPU OOM: "
                        "the vote then runs on the CPU).")
    p.add_argument("--dump_features", default=None, help="Folder where to write trainfeat.pth, testfeat.pth, "
                   "trainlabels.pth and testlabels.pth (L2-normalised features, as the reference).")
    p.add_argument("--load_features", default=None, help="Folder of a feature dump to vote on instead of "
                   "extracting features (read with weights_only=True).")
    add_launch_flags(p)
    add_image_folder_flags(p)
    p.add_argument("--output_dir", default=None, help="Folder for knn.json (nothing is written without it).")
    return p


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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_launched(args, lambda info, say: run(args, info.device, info.is_main, say),
                        interrupted="nothing was written (knn.json and feature dumps are written whole, at the end)")


if __name__ == "__main__":
    raise SystemExit(main())
