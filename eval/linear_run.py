"""The work of `python -m eval.linear` (eval/linear.py holds its flags): the probe's training, resume and
validation. Imported only when the command runs, so `--help` needs no torch."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from dino_seg.checkpoint import add_prefix, load_checkpoint, load_module_state, save_checkpoint
from dino_seg.cli import check_output_dir
from dino_seg.distributed import DistInfo, all_gather_objects, all_reduce_mean
from dino_seg.errors import UserError
from dino_seg.image_folder import LabelledDataset, eval_transform, find_splits, train_transform
from dino_seg.knn import shard
from dino_seg.linear_probe import (LinearClassifier, check_probe_flags, evaluate_probe, probe_defaults, probe_dim,
                                   train_probe_epoch)
from dino_seg.provenance import differences, weights_identity
from dino_seg.runs import EPOCH_LOG, append_record, read_jsonl, trim_records
from dino_seg.seeding import epoch_seed, seed_everything
from dino_seg.weights import PRESETS
from eval.common import load_from_args, progress, resolve_weights
from eval.linear import CHECKPOINT


@dataclass
class Probe:
    """The frozen backbone, the classifier on its features, and what decides the classifier's meaning
    (`settings`: recorded in the checkpoint, compared when a run resumes or is evaluated)."""

    model: nn.Module
    classifier: LinearClassifier  # the module itself; `train` wraps it in DDP under torchrun
    n_last_blocks: int
    avgpool_patchtokens: bool
    settings: dict

    def features_kwargs(self, device: torch.device) -> dict:
        return dict(n_last_blocks=self.n_last_blocks, avgpool_patchtokens=self.avgpool_patchtokens, device=device)


def run(args: argparse.Namespace, info: DistInfo, say) -> int:
    """Train the classifier (resuming from OUTPUT_DIR), or with --evaluate only validate a saved one."""
    out = Path(args.output_dir)
    check_output_dir(out)
    train_split, val_split = find_splits(args.data_path)
    num_labels = args.num_labels or len(train_split.classes)
    if num_labels < len(train_split.classes):
        raise UserError(f"--num_labels {num_labels}: {train_split.root} has {len(train_split.classes)} classes")
    if args.evaluate:  # checked before the weights are loaded (or downloaded)
        saved = Path(args.linear_weights) if args.linear_weights else out / CHECKPOINT
        if not saved.is_file():
            raise UserError(f"--evaluate: no classifier at {saved} (train one first, or pass --linear_weights)")
    probe = build_probe(args, info.device, num_labels, train_split.classes, say)
    val_set = LabelledDataset(val_split, eval_transform(args.resize_size, args.crop_size))
    val_loader = DataLoader(shard(val_set, info.rank, info.world_size), batch_size=args.batch_size_per_gpu,
                            num_workers=args.num_workers, pin_memory=info.device.type == "cuda")

    def validate(epoch_label: str) -> dict[str, float]:
        return validate_probe(probe, val_loader, info, f"Test {epoch_label}", num_labels)

    if args.evaluate:
        load_classifier(probe, saved, official=bool(args.linear_weights))
        stats = validate("")
        say(f"Accuracy of the network on the {len(val_set)} test images: {stats['acc1']:.1f}%" +
            (f" (top-5 {stats['acc5']:.1f}%)" if "acc5" in stats else ""))
        return 0
    train_set = LabelledDataset(train_split, train_transform(args.crop_size))
    best_acc = train(args, info, probe, train_set, validate, say, val_images=len(val_set))
    say("Training of the supervised linear classifier on frozen features completed.\n"
        f"Top-1 test accuracy: {best_acc:.1f}")
    return 0


def build_probe(args: argparse.Namespace, device: torch.device, num_labels: int, classes: list[str],
                say: Callable[[str], None]) -> Probe:
    """The backbone of the flags, the probe's feature flags (the paper's defaults for the architecture) and a
    classifier initialised the same on every process."""
    model, description = load_from_args(args, device)
    arch = getattr(model, "arch", args.arch)
    n_default, avg_default = probe_defaults(arch)
    n_last = args.n_last_blocks if args.n_last_blocks is not None else n_default
    avgpool = args.avgpool_patchtokens if args.avgpool_patchtokens is not None else avg_default
    check_probe_flags(model, n_last, avgpool)
    say(f"Model {description}; features: " + (f"[CLS] of the last {n_last} block(s)" +
        (" + average-pooled patch tokens" if avgpool else "") if hasattr(model, "blocks") else "pooled output"))
    seed_everything(args.seed)  # the classifier's initial weights are the same on every process
    classifier = LinearClassifier(probe_dim(model, n_last, avgpool), num_labels).to(device)
    source, _ = resolve_weights(args)
    settings = {
        # The weights by content (a renamed file still matches, a retrained one does not), as eval.davis records them.
        "weights": weights_identity(source, PRESETS),
        "checkpoint_key": args.checkpoint_key if source and source not in PRESETS else None,
        "arch": arch, "patch_size": getattr(model, "patch_size", None),
        "n_last_blocks": n_last, "avgpool_patchtokens": avgpool, "num_labels": num_labels, "classes": list(classes),
    }
    return Probe(model, classifier, n_last, avgpool, settings)


def check_provenance(recorded: dict | None, probe: Probe, path: Path) -> None:
    """Refuse a classifier trained on other weights or features (UserError naming what differs): resuming or
    evaluating it would mix two models without a word."""
    if not isinstance(recorded, dict) or "weights" not in recorded:
        raise UserError(f"{path} holds no record of the weights it was trained on: remove it to train again, or "
                        "choose another --output_dir")
    diff = differences(recorded, probe.settings)
    if diff:
        raise UserError(f"{path} was trained with other settings ({'; '.join(diff)}): remove it to train again, "
                        "or choose another --output_dir")


def load_classifier(probe: Probe, path: Path, official: bool) -> None:
    """The classifier saved at `path`: ours (checked against this run's settings), or with `official` any
    file holding a `state_dict` of `linear.*` / `module.linear.*` keys (official *_linearweights.pth)."""
    ckpt = load_checkpoint(path)
    if not official:
        check_provenance(ckpt.get("probe"), probe, path)
    load_module_state(probe.classifier, ckpt.get("state_dict", {}), what="state_dict", path=path)


def validate_probe(probe: Probe, loader: DataLoader, info: DistInfo, desc: str, num_labels: int) -> dict[str, float]:
    """Loss and top-1 (top-5 with at least 5 classes) over the validation set, summed over the processes."""
    with progress(loader, desc, enabled=info.is_main, unit="it") as bar:
        sums = evaluate_probe(probe.model, probe.classifier, bar, **probe.features_kwargs(info.device))
    sums = all_reduce_mean(sums) * info.world_size  # (4,) summed over the processes
    loss, hit1, hit5, n = sums.tolist()
    stats = {"loss": loss / n, "acc1": 100.0 * hit1 / n}
    if num_labels >= 5:  # the reference reports top-5 only with at least 5 classes
        stats["acc5"] = 100.0 * hit5 / n
    return stats


def train(args: argparse.Namespace, info: DistInfo, probe: Probe, train_set: LabelledDataset,
          validate: Callable[[str], dict[str, float]], say: Callable[[str], None], val_images: int) -> float:
    """The reference's training loop, resumed from OUTPUT_DIR/checkpoint.pth.tar; returns the best top-1."""
    device, out = info.device, Path(args.output_dir)
    classifier: nn.Module = probe.classifier
    if info.distributed:
        classifier = nn.parallel.DistributedDataParallel(
            probe.classifier, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=args.seed)
    loader = DataLoader(train_set, sampler=sampler, batch_size=args.batch_size_per_gpu,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda")
    # Linear scaling rule as the reference; momentum 0.9, no weight decay, cosine to 0 per epoch.
    optimizer = torch.optim.SGD(classifier.parameters(), args.lr * args.batch_size_per_gpu * info.world_size / 256.0,
                                momentum=0.9, weight_decay=0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=0)
    start_epoch, best_acc = resume(out, probe, optimizer, scheduler, say)
    if len(set(all_gather_objects(start_epoch))) > 1:
        raise UserError(f"--output_dir: the processes found different checkpoints in {out}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        trim_records(out / EPOCH_LOG, lambda r: int(r.get("epoch", -1)) < start_epoch)

    for epoch in range(start_epoch, args.epochs):
        seed_everything(epoch_seed(args.seed, epoch, info.rank))  # same crops whether resumed or not
        sampler.set_epoch(epoch)
        # The bar is closed before an interruption is reported, so that the report is the last line.
        with progress(loader, f"Epoch {epoch}/{args.epochs}", enabled=info.is_main, unit="it") as bar:
            train_stats = train_probe_epoch(probe.model, classifier, bar, optimizer,
                                            on_step=lambda loss: bar.set_postfix(loss=f"{loss:.4f}", refresh=False),
                                            **probe.features_kwargs(device))
        scheduler.step()
        train_stats["loss"] = float(all_reduce_mean(torch.tensor(train_stats["loss"], device=device)))
        log_stats = {**{f"train_{k}": v for k, v in train_stats.items()}, "epoch": epoch}
        if epoch % args.val_freq == 0 or epoch == args.epochs - 1:
            test_stats = validate(f"{epoch}")
            say(f"Accuracy at epoch {epoch} of the network on the {val_images} test images: "
                f"{test_stats['acc1']:.1f}%")
            best_acc = max(best_acc, test_stats["acc1"])
            say(f"Max accuracy so far: {best_acc:.2f}%")
            log_stats.update({f"test_{k}": v for k, v in test_stats.items()})
        if info.is_main:
            append_record(out / EPOCH_LOG, log_stats)  # first: a crash before the save leaves a line to trim
            save_checkpoint({
                "epoch": epoch + 1,
                "state_dict": add_prefix(probe.classifier.state_dict()),  # `module.` as the reference's DDP
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best_acc": best_acc,
                "args": {k: v for k, v in vars(args).items()},
                "probe": probe.settings,
            }, out / CHECKPOINT)
    return best_acc


def resume(out: Path, probe: Probe, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, say: Callable[[str], None]) -> tuple[int, float]:
    """(start epoch, best top-1 so far) after loading OUTPUT_DIR's checkpoint, if any, into the classifier,
    optimiser and schedule; a checkpoint of other weights or features is refused (check_provenance)."""
    if any("train_wd" in r for r in read_jsonl(out / EPOCH_LOG)):  # the reference default is "." too
        raise UserError(f"--output_dir: {out} holds the log.txt of a `python -m train` run; give the linear "
                        "probe a folder of its own")
    path = out / CHECKPOINT
    if not path.is_file():
        return 0, 0.0
    ckpt = load_checkpoint(path)
    check_provenance(ckpt.get("probe"), probe, path)
    load_module_state(probe.classifier, ckpt["state_dict"], what="state_dict", path=path)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    say(f"Found checkpoint at {path}: resuming at epoch {int(ckpt['epoch'])}")
    return int(ckpt["epoch"]), float(ckpt["best_acc"])
