"""Command line (the reference `main_dino.py` flags, plus crop sizes, --bf16, --device) and the training run."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from dino_seg.checkpoint import add_prefix, load_checkpoint, load_module_state, save_checkpoint
from dino_seg.cli import check_output_dir, run_command
from dino_seg.distributed import DistInfo, all_gather_objects, cleanup_distributed, init_distributed
from dino_seg.errors import UserError
from dino_seg.files import NoSpaceError, remove_stale_temp
from dino_seg.families import training_backbone
from dino_seg.models import build_backbone, model_name
from dino_seg.weights import load_state_dict
from dino_seg.runs import EPOCH_LOG, METRICS_LOG, append_record, trim_records, write_record
from dino_seg.seeding import epoch_seed, seed_everything
from train.augment import DataAugmentationDINO
from train.data import ImageFilesDataset, build_loader, check_data_path
from train.engine import (EpochResult, NonFiniteLossError, Precision, Schedules, resolve_precision,
                          train_one_epoch)
from train.head import DINOHead, MultiCropWrapper
from train.flags import get_args_parser
from train.knn_monitor import KnnMonitor
from train.loss import DINOLoss, collapse_warning
from train.optim import build_optimizer, get_params_groups
from train.schedules import cosine_scheduler

CHECKPOINT = "checkpoint.pth"


def has_batchnorms(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def build_student_teacher(*, arch: str, patch_size: int, drop_path_rate: float, out_dim: int,
                          use_bn_in_head: bool, norm_last_layer: bool, init_weights: str = ""
                          ) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and teacher, backbone + DINO head each; the teacher gets the
    student's weights and no gradients. With `init_weights`, both backbones start from those weights (any
    DINO generation, its architecture taken from them) and the heads are new."""
    if init_weights:
        sd = load_state_dict(init_weights)
        student_backbone = training_backbone(sd, init_weights, drop_path_rate=drop_path_rate)
        teacher_backbone = training_backbone(sd, init_weights)
    else:
        student_backbone = build_backbone(arch, patch_size=patch_size, drop_path_rate=drop_path_rate)
        teacher_backbone = build_backbone(arch, patch_size=patch_size)
    embed_dim = student_backbone.embed_dim
    student = MultiCropWrapper(student_backbone, DINOHead(embed_dim, out_dim, use_bn=use_bn_in_head,
                                                          norm_last_layer=norm_last_layer))
    teacher = MultiCropWrapper(teacher_backbone, DINOHead(embed_dim, out_dim, use_bn=use_bn_in_head))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


@dataclass
class Networks:
    """The student (DDP-wrapped under torchrun: `student`; the module itself: `student_core`), the teacher,
    and what trains them."""

    student_core: nn.Module
    student: nn.Module
    teacher: MultiCropWrapper
    with_bn: bool  # ResNet backbones: BatchNorm statistics need syncing across processes
    dino_loss: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    schedules: Schedules


def train_dino(args: argparse.Namespace, info: DistInfo, say: Callable[[str], None]) -> int:
    """The training run described by the parsed flags; returns the exit status."""
    check_data_path(args.data_path)  # before the flags are printed: a wrong path is the only line
    out = prepare_output(args, info, say)
    seed_everything(args.seed)  # same initial weights on every process
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = resolve_precision(info.device.type, use_fp16=args.use_fp16, bf16=args.bf16)
    say(f"Precision: {precision.note}")
    dataset, loader, knn = build_data(args, info, say)
    nets = build_networks(args, info, precision, niter=len(loader), say=say)
    start_epoch, skipped = resume(args, out, nets, say)
    if len(set(starts := all_gather_objects(start_epoch))) > 1:
        raise UserError(f"--output_dir: the processes found different checkpoints in {out} (resume epochs "
                        f"{starts} by rank): it must be one folder shared by all nodes")
    if info.is_main:
        # Lines past the checkpoint come from an interrupted epoch that is about to be redone.
        trim_records(out / EPOCH_LOG, lambda r: int(r.get("epoch", -1)) < start_epoch)
        trim_records(out / METRICS_LOG, lambda r: int(r.get("it", -1)) < start_epoch * len(loader))
    if start_epoch >= args.epochs:
        say(f"Nothing to do: the checkpoint already has {start_epoch} of {args.epochs} epochs.")
        return 0

    say("Starting DINO training!")
    start_time = time.time()
    warned: set[str] = set(skipped)
    for epoch in range(start_epoch, args.epochs):
        seed_everything(epoch_seed(args.seed, epoch, info.rank))
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        result = run_epoch(args, info, nets, loader, epoch, precision, warned, out)
        for paths in all_gather_objects(sorted(result.skipped)):
            skipped.update(paths)
        for path in sorted(skipped - warned):
            warned.add(path)
            say(f"warning: skipping unreadable image {path}")
        log_stats = {**{f"train_{k}": v for k, v in result.stats.items()}, "epoch": epoch,
                     "skipped_images": len(skipped)}
        due = knn is not None and knn.due(epoch, args.epochs)
        knn_stats = knn.evaluate(nets.teacher.backbone, info.device) if due else None
        log_stats.update(knn_stats or {})
        if info.is_main:
            save_epoch(args, info, nets, out, epoch, log_stats, skipped, niter=len(loader))
        say(f"Epoch {epoch}: " + "  ".join(f"{k} {v:.6g}" for k, v in result.stats.items()) +
            (f"  skipped images {len(skipped)}" if skipped else "") +
            (f"  k-NN top-1 {knn_stats['knn_top1']:.2f} top-5 {knn_stats['knn_top5']:.2f}" if knn_stats else ""))
        warning = collapse_warning(result.stats["teacher_entropy"], result.stats["kl"])
        if warning:
            say(f"warning: epoch {epoch}: {warning}")
    say(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}")
    return 0


def prepare_output(args: argparse.Namespace, info: DistInfo, say: Callable[[str], None]) -> Path:
    """OUTPUT_DIR, created (rank 0) and rid of a killed save's temporary file; the flags and processes printed."""
    out = Path(args.output_dir)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # A run killed while saving (kill -9) leaves a checkpoint-sized temporary file: remove it.
        for stale in remove_stale_temp(out, recursive=False):
            say(f"removed a stale temporary file of an interrupted run: {stale}")
    say("\n".join(f"{k}: {v}" for k, v in sorted(vars(args).items())))
    say(f"Processes: {info.world_size} ({info.launcher} launch, backend {info.backend or 'none'}), "
        f"device {info.device}")
    return out


def build_data(args: argparse.Namespace, info: DistInfo, say: Callable[[str], None]
               ) -> tuple[ImageFilesDataset, torch.utils.data.DataLoader, KnnMonitor | None]:
    """The multi-crop dataset, this process's loader, and the k-NN monitor of --knn_data_path (or None)."""
    transform = DataAugmentationDINO(args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
                                     global_crops_size=args.global_crops_size, local_crops_size=args.local_crops_size,
                                     augmentation=args.augmentation)
    dataset = ImageFilesDataset(args.data_path, transform, seed=args.seed)
    loader = build_loader(dataset, batch_size=args.batch_size_per_gpu, num_workers=args.num_workers,
                          rank=info.rank, world_size=info.world_size, seed=args.seed,
                          pin_memory=info.device.type == "cuda")
    say(f"Data loaded: there are {len(dataset)} images ({len(loader)} iterations per epoch).")
    knn = None
    if args.knn_data_path:
        knn = KnnMonitor(args.knn_data_path, crop_size=args.global_crops_size, k=args.knn_k,
                         temperature=args.knn_temperature, freq=args.knn_freq, batch_size=args.batch_size_per_gpu,
                         num_workers=args.num_workers, is_main=info.is_main)
        say(knn.describe())
    return dataset, loader, knn


def build_networks(args: argparse.Namespace, info: DistInfo, precision: Precision, niter: int,
                   say: Callable[[str], None]) -> Networks:
    """Student and teacher on the device (SyncBatchNorm and DDP under torchrun), the DINO loss, the optimiser,
    the fp16 loss scaler and the per-iteration schedules."""
    device = info.device
    student_core, teacher = build_student_teacher(
        arch=args.arch, patch_size=args.patch_size, drop_path_rate=args.drop_path_rate, out_dim=args.out_dim,
        use_bn_in_head=args.use_bn_in_head, norm_last_layer=args.norm_last_layer, init_weights=args.init_weights)
    student_core, teacher = student_core.to(device), teacher.to(device)
    with_bn = has_batchnorms(student_core)
    if with_bn and info.distributed and device.type == "cuda":
        student_core = nn.SyncBatchNorm.convert_sync_batchnorm(student_core)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    elif with_bn and info.distributed:
        say("SyncBatchNorm needs CUDA: BatchNorm normalises with per-process batch statistics here, and "
            "rank 0's running statistics are copied to every process after each step")
    student: nn.Module = student_core
    if info.distributed:
        student = nn.parallel.DistributedDataParallel(
            student_core, device_ids=[device.index] if device.type == "cuda" else None)
    name = model_name(student_core.backbone)
    say(f"Student and teacher are built: they are both {name} networks" +
        (f", initialised from {args.init_weights} (new heads)." if args.init_weights else "."))
    licence = getattr(student_core.backbone, "licence", None)
    if licence:
        say(licence)
    dino_loss = DINOLoss(args.out_dim, args.local_crops_number + 2, args.warmup_teacher_temp, args.teacher_temp,
                         args.warmup_teacher_temp_epochs, args.epochs).to(device)
    schedules = Schedules(
        lr=cosine_scheduler(args.lr * args.batch_size_per_gpu * info.world_size / 256.0,  # linear scaling rule
                            args.min_lr, args.epochs, niter, warmup_epochs=args.warmup_epochs),
        wd=cosine_scheduler(args.weight_decay, args.weight_decay_end, args.epochs, niter),
        momentum=cosine_scheduler(args.momentum_teacher, 1.0, args.epochs, niter),
        niter_per_ep=niter,
    )
    return Networks(student_core, student, teacher, with_bn, dino_loss,
                    build_optimizer(args.optimizer, get_params_groups(student_core)),
                    torch.amp.GradScaler("cuda") if precision.use_scaler else None, schedules)


def resume(args: argparse.Namespace, out: Path, nets: Networks, say: Callable[[str], None]) -> tuple[int, set[str]]:
    """(start epoch, images found unreadable so far) after loading OUTPUT_DIR/checkpoint.pth, if any, into the
    networks, loss, optimiser and scaler; flags that differ from the checkpoint's are named."""
    path = out / CHECKPOINT
    if not path.is_file():
        return 0, set()
    ckpt = load_checkpoint(path)
    load_module_state(nets.student_core, ckpt["student"], what="student", path=path)
    load_module_state(nets.teacher, ckpt["teacher"], what="teacher", path=path)
    nets.optimizer.load_state_dict(ckpt["optimizer"])
    nets.dino_loss.load_state_dict(ckpt["dino_loss"])
    if nets.scaler is not None and ckpt.get("fp16_scaler"):
        nets.scaler.load_state_dict(ckpt["fp16_scaler"])
    start_epoch = int(ckpt["epoch"])
    changed = {k: (v, getattr(args, k)) for k, v in (ckpt.get("args") or {}).items()
               if hasattr(args, k) and k not in ("local_rank", "output_dir", "data_path")
               and _plain(v) != _plain(getattr(args, k))}
    say(f"Found checkpoint at {path}: resuming at epoch {start_epoch}" +
        (f" with changed flags {', '.join(f'{k}: {a} -> {b}' for k, (a, b) in changed.items())}" if changed else ""))
    return start_epoch, set(ckpt.get("skipped_images", []))


def run_epoch(args: argparse.Namespace, info: DistInfo, nets: Networks, loader: torch.utils.data.DataLoader,
              epoch: int, precision: Precision, warned: set[str], out: Path) -> EpochResult:
    """One epoch under a progress bar (rank 0), each iteration's metrics appended to metrics.jsonl (rank 0)
    and each unreadable image warned of once; returns train_one_epoch's result."""
    bar = tqdm(loader, total=len(loader), desc=f"Epoch {epoch}/{args.epochs}", unit="it", dynamic_ncols=True,
               disable=not info.is_main, file=sys.stderr)
    running = {"loss": 0.0, "n": 0}
    metrics_file = open(out / METRICS_LOG, "a", encoding="utf-8") if info.is_main else None

    def on_iteration(record: dict) -> None:
        for path in record.pop("skipped"):
            if path not in warned:
                warned.add(path)
                tqdm.write(f"warning: skipping unreadable image {path}", file=sys.stderr)
        if metrics_file is not None:
            write_record(metrics_file, record)
        running["loss"] += record["loss"]
        running["n"] += 1
        bar.set_postfix(loss=f"{running['loss'] / running['n']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)

    try:
        return train_one_epoch(
            student=nets.student, student_core=nets.student_core, teacher=nets.teacher, dino_loss=nets.dino_loss,
            batches=bar, optimizer=nets.optimizer, schedules=nets.schedules, epoch=epoch, device=info.device,
            precision=precision, scaler=nets.scaler, clip_grad=args.clip_grad,
            freeze_last_layer=args.freeze_last_layer,
            sync_buffers=nets.with_bn and info.distributed and info.device.type != "cuda",
            on_iteration=on_iteration if info.is_main else None)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()


def save_epoch(args: argparse.Namespace, info: DistInfo, nets: Networks, out: Path, epoch: int, log_stats: dict,
               skipped: set[str], niter: int) -> None:
    """Rank 0's end of an epoch: the log line, then checkpoint.pth in the reference format (and every
    --saveckp_freq epochs checkpointNNNN.pth), each written atomically."""
    # The log line goes first: a crash before the checkpoint is renamed in place only leaves a line the resume trims.
    append_record(out / EPOCH_LOG, log_stats)
    save_dict = {
        "student": add_prefix(nets.student_core.state_dict()),  # `module.` as the reference's DDP student
        # The reference wraps the teacher in DDP only when it has BatchNorms (ResNet).
        "teacher": add_prefix(nets.teacher.state_dict()) if nets.with_bn else nets.teacher.state_dict(),
        "optimizer": nets.optimizer.state_dict(),
        "epoch": epoch + 1,
        "args": {k: _plain(v) for k, v in vars(args).items()},
        "dino_loss": nets.dino_loss.state_dict(),
        "fp16_scaler": nets.scaler.state_dict() if nets.scaler is not None else None,
        "iteration": (epoch + 1) * niter,
        "world_size": info.world_size,
        "skipped_images": sorted(skipped),
    }
    save_checkpoint(save_dict, out / CHECKPOINT)
    if args.saveckp_freq and epoch % args.saveckp_freq == 0:
        save_checkpoint(save_dict, out / f"checkpoint{epoch:04}.pth")


def _plain(value: object) -> object:
    """Tuples as lists, so flags compare and serialise the same way whatever parsed them."""
    return list(value) if isinstance(value, tuple) else value


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and train under the command runner (one-line errors, Ctrl-C exits 130)."""
    return run(get_args_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train with the parsed flags under the command runner (`python -m train` parses them before importing this
    module, so that --help needs no torch)."""
    args.arch = args.arch.replace("deit", "vit")  # the reference's DeiT-S is our ViT-S
    return run_command(lambda: launch(args), interrupted=lambda: _kept(
        args, "{} holds the last complete epoch", "no checkpoint was written yet") +
        "; start again with the same --output_dir to resume")


def _kept(args: argparse.Namespace, found: str, missing: str) -> str:
    """What the run leaves behind: `found` with the checkpoint's path when there is one, else `missing`."""
    ckpt = Path(args.output_dir) / CHECKPOINT
    return found.format(ckpt) if ckpt.is_file() else missing


def launch(args: argparse.Namespace) -> int:
    """Join the process group if launched by torchrun or SLURM, train, and leave the group."""
    check_output_dir(args.output_dir)
    info = init_distributed(args.device, args.dist_url, local_rank=args.local_rank)

    def say(message: str) -> None:
        if info.is_main:
            print(message, flush=True)

    try:
        return train_dino(args, info, say)
    except NonFiniteLossError as err:
        kept = _kept(args, "the last good checkpoint {} is kept unchanged", "no checkpoint was written")
        if info.is_main:
            print(f"error: {err}; {kept}. Lower --lr, raise --warmup_epochs, use --use_fp16 false or "
                  "--clip_grad, then start again with the same --output_dir to resume.", file=sys.stderr, flush=True)
        return 1
    except NoSpaceError as err:
        kept = _kept(args, "the last complete checkpoint {} is kept unchanged", "no checkpoint was written")
        raise UserError(f"{err}; {kept}. Free some space, then start again with the same --output_dir to "
                        "resume.") from None
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    raise SystemExit(main())
