"""Process-group set-up from torchrun (env://) or SLURM variables, and small collective helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import pick_device
from .errors import UserError, first_line


class LaunchError(UserError):
    """A multi-process launch this process cannot join (SLURM without a master address, a rendezvous that fails)."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank among world_size, its device and the backend in use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None for a single process without a process group
    launcher: str  # "torchrun", "slurm" or "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _slurm_master_addr(env: dict[str, str]) -> str:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM launch: MASTER_ADDR is not set and SLURM_JOB_NODELIST is missing; "
                           "export MASTER_ADDR to the first node's address")
    if shutil.which("scontrol") is None:
        if "[" in nodelist or "," in nodelist:
            raise LaunchError(f"SLURM launch: cannot expand the node list {nodelist!r} without scontrol; "
                               "export MASTER_ADDR to the first node's address")
        return nodelist
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                           capture_output=True, text=True).stdout.split()
    return hosts[0]


def detect_launch(env: dict[str, str] | None = None, local_rank: int = 0) -> tuple[str, int, int, int]:
    """(launcher, rank, world_size, local_rank) from the environment: torchrun's RANK/WORLD_SIZE/
    LOCAL_RANK first, then SLURM's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, else one process.

    `local_rank` (the --local_rank flag) is used when RANK is set but LOCAL_RANK is not: the
    deprecated torch.distributed.launch without --use-env passes it only on the command line."""
    env = dict(os.environ) if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", local_rank))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm", int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return "none", 0, 1, 0


def init_distributed(device: str = "auto", dist_url: str = "env://", local_rank: int = 0) -> DistInfo:
    """Pick this process's device and, with more than one process, join the process group:
    NCCL on CUDA, gloo otherwise. Under SLURM, MASTER_ADDR defaults to the job's first node and
    MASTER_PORT to 29500 (export them to override). `local_rank` is the --local_rank flag."""
    launcher, rank, world_size, local_rank = detect_launch(local_rank=local_rank)
    dev = pick_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world_size == 1:
        return DistInfo(0, 1, 0, dev, None, launcher)
    if launcher == "slurm" and dist_url == "env://":
        os.environ.setdefault("MASTER_ADDR", _slurm_master_addr(dict(os.environ)))
        os.environ.setdefault("MASTER_PORT", "29500")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank)
        dist.barrier()
    except (RuntimeError, ValueError) as err:  # torch's rendezvous errors (DistNetworkError is a RuntimeError)
        raise LaunchError(f"--dist_url {dist_url}: process {rank} of {world_size} cannot join the process group "
                          f"({first_line(err)})") from None
    return DistInfo(rank, world_size, local_rank, dev, backend, launcher)


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def process_group() -> tuple[int, int]:
    """(rank, world size) in the process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if _group_ready() else (0, 1)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (itself without a process group)."""
    if not _group_ready():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def all_gather_objects(obj: object) -> list[object]:
    """Every process's `obj`, in rank order ([obj] without a process group)."""
    if not _group_ready():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_strided(local: torch.Tensor, total: int) -> torch.Tensor | None:
    """The rows (total, D) of which each process holds its strided share `local` (rows rank::world_size, as
    sharding.shard_indices splits items), put back in order on rank 0; None on the other ranks, `local`
    itself without a process group. all_gather of equal-sized padded blocks: gloo and NCCL both take it."""
    rank, world = process_group()
    if world == 1:
        return local
    per_rank = -(-total // world)
    padded = local.new_zeros(per_rank, local.shape[1])  # (ceil(total / world), D)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    if rank != 0:
        return None
    out = local.new_empty(total, local.shape[1])
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))]
    return out
