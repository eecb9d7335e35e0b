"""One epoch of DINO training: student step, teacher EMA, centre update, metrics per iteration."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dino_seg.distributed import all_reduce_mean
from dino_seg.errors import UserError
from train.loss import DINOLoss, collapse_monitors
from train.optim import cancel_gradients_last_layer, clip_gradients


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: training must stop before anything is saved."""

    def __init__(self, value: float, epoch: int, iteration: int) -> None:
        super().__init__(f"loss is {value} at epoch {epoch}, iteration {iteration}: stopping training")
        self.value, self.epoch, self.iteration = value, epoch, iteration


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: fp32), whether fp16 loss scaling is used, and a line for the log."""

    dtype: torch.dtype | None
    use_scaler: bool
    note: str


def resolve_precision(device_type: str, *, use_fp16: bool, bf16: bool) -> Precision:
    """bf16 autocast when asked (any device); fp16 with GradScaler on CUDA when use_fp16 (the
    reference default); fp32 otherwise, including use_fp16 on CPU/MPS where fp16 autocast brings no
    speed-up and GradScaler is CUDA-only."""
    if bf16:
        return Precision(torch.bfloat16, False, f"bf16 autocast on {device_type}" +
                         (" (--use_fp16 is ignored when --bf16 true)" if use_fp16 else ""))
    if use_fp16 and device_type == "cuda":
        return Precision(torch.float16, True, "fp16 autocast with loss scaling (GradScaler) on cuda")
    if use_fp16:
        return Precision(None, False, f"--use_fp16 true has no effect on {device_type}: training in fp32 "
                                      "(fp16 mixed precision is CUDA-only; --bf16 true gives mixed precision here)")
    return Precision(None, False, f"fp32 on {device_type}")


@dataclass
class Schedules:
    """Per-iteration values, each (epochs * niter_per_ep,): learning rate, weight decay, teacher momentum."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    niter_per_ep: int


@dataclass
class EpochResult:
    """Averages over the epoch's iterations, and the image files that could not be decoded."""

    stats: dict[str, float]
    skipped: set[str] = field(default_factory=set)


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher = m * teacher + (1 - m) * student, parameter by parameter (buffers untouched)."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process."""
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def train_one_epoch(*, student: nn.Module, student_core: nn.Module, teacher: nn.Module, dino_loss: DINOLoss,
                    batches: Iterable[tuple[list[torch.Tensor], list[str]]], optimizer: torch.optim.Optimizer,
                    schedules: Schedules, epoch: int, device: torch.device, precision: Precision,
                    scaler: torch.amp.GradScaler | None, clip_grad: float, freeze_last_layer: int,
                    sync_buffers: bool = False,
                    on_iteration: Callable[[dict], None] | None = None) -> EpochResult:
    """Train `student` (possibly DDP-wrapped; `student_core` is the unwrapped module) for one pass
    over `batches` (lists of crops (B, 3, H, W), global crops first), following the reference
    `train_one_epoch`. Raises NonFiniteLossError before the step on a NaN/inf loss (checked on the
    loss averaged over all processes, so all of them stop together). `sync_buffers` copies rank 0's
    buffers (BatchNorm statistics) of student and teacher to all processes after every step, for
    BatchNorm without SyncBatchNorm (CPU), so that every process ends with the same state."""
    sums: dict[str, float] = {}
    n = 0
    skipped: set[str] = set()
    teacher_temp = float(dino_loss.teacher_temp_schedule[epoch])
    for i, (crops, bad_paths) in enumerate(batches):
        it = schedules.niter_per_ep * epoch + i  # global iteration: index into the schedules
        for g, group in enumerate(optimizer.param_groups):
            # Python floats: NumPy scalars in the optimiser state would not load with weights_only=True.
            group["lr"] = float(schedules.lr[it])
            if g == 0:  # only the first group is regularised
                group["weight_decay"] = float(schedules.wd[it])
        new_bad = [p for p in bad_paths if p not in skipped]
        skipped.update(bad_paths)
        images = [im.to(device, non_blocking=True) for im in crops]

        with torch.autocast(device.type, dtype=precision.dtype or torch.float32,
                            enabled=precision.dtype is not None):
            with torch.no_grad():
                teacher_output = teacher(images[:2])  # (2B, K): the teacher sees the global crops only
            student_output = student(images)  # (ncrops * B, K)
            teacher_p = dino_loss.teacher_probs(teacher_output, epoch)  # before the centre moves
            loss = dino_loss(student_output, teacher_output, epoch)

        entropy, kl = collapse_monitors(teacher_p, loss)
        stats = all_reduce_mean(torch.tensor([loss.item(), entropy, kl], dtype=torch.float32, device=device))
        loss_value, entropy, kl = (float(v) for v in stats.tolist())
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(loss_value, epoch, it)

        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            if clip_grad:
                clip_gradients(student, clip_grad)
            cancel_gradients_last_layer(epoch, student, freeze_last_layer)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                clip_gradients(student, clip_grad)
            cancel_gradients_last_layer(epoch, student, freeze_last_layer)
            scaler.step(optimizer)
            scaler.update()

        m = float(schedules.momentum[it])
        update_teacher(student_core, teacher, m)
        if sync_buffers:
            broadcast_buffers(student_core)
            broadcast_buffers(teacher)

        record = {"it": it, "epoch": epoch, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                  "wd": optimizer.param_groups[0]["weight_decay"], "momentum": m,
                  "teacher_temp": teacher_temp, "teacher_entropy": entropy, "kl": kl}
        for key in ("loss", "lr", "wd", "momentum", "teacher_temp", "teacher_entropy", "kl"):
            sums[key] = sums.get(key, 0.0) + float(record[key])
        n += 1
        if on_iteration is not None:
            on_iteration({**record, "skipped": new_bad})
    if n == 0:
        raise UserError("the data loader yielded no batch: fewer images than --batch_size_per_gpu per process")
    return EpochResult({k: v / n for k, v in sums.items()}, skipped)
