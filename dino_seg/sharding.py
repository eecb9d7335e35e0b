"""Work split across processes: items by rank, per-item results gathered on rank 0, global progress counts, and
one failure ending every rank."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch.distributed as dist

from .distributed import _group_ready, all_gather_objects
from .errors import UserError, first_line

T = TypeVar("T")


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The item indices rank `rank` of `world_size` works on: every world_size-th from `rank` on.

    Striding (not contiguous blocks) spreads neighbouring items, which often cost alike (same folder, same
    size), over all ranks; every index goes to exactly one rank, and the split depends on nothing else."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size} process(es)")
    return list(range(rank, n, world_size))


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of `items` rank `rank` works on (see shard_indices)."""
    return [items[i] for i in shard_indices(len(items), rank, world_size)]


def gather_to_main(obj: object, rank: int = 0, world_size: int = 1) -> list[object] | None:
    """Every rank's `obj` in rank order on rank 0, None on the others ([obj] without a process group).
    A collective: every rank must call it."""
    if world_size == 1 or not _group_ready():
        return [obj]
    out: list[object] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


class GlobalCounter:
    """Items finished by all ranks together, without a collective call: each rank adds to a counter in the
    process group's key-value store, and rank 0 reads it for its progress bar. Without a process group it
    counts this process's items. Every rank must create its counters in the same order (each gets a fresh key,
    so a second run in the same process group starts from 0)."""

    _created = 0

    def __init__(self, name: str = "done") -> None:
        GlobalCounter._created += 1
        self.key = f"dino_seg/{name}/{GlobalCounter._created}"
        self.local = 0
        self._store = None
        if _group_ready():
            try:
                self._store = dist.distributed_c10d._get_default_store()
            except (AttributeError, RuntimeError, ValueError):
                self._store = None  # a torch without the store API: progress shows this rank's items only

    def add(self, n: int = 1) -> int:
        """Count `n` more items done here; return the global count so far."""
        self.local += n
        if self._store is None:
            return self.local
        return int(self._store.add(self.key, n))

    def value(self) -> int:
        """The global count so far."""
        if self._store is None:
            return self.local
        return int(self._store.add(self.key, 0))


class RankFailed(UserError):
    """Another process of the group failed, so this one stops too (the message names that process)."""


def _agreed(err: BaseException) -> BaseException:
    err.dino_seg_agreed = True  # every rank knows of this failure: no further collective may wait for it
    return err


def is_agreed(err: BaseException) -> bool:
    """Whether `err` was raised by check_all_ranks: every rank raised with it, so none must call another
    collective (it would wait forever for the ranks that have gone)."""
    return getattr(err, "dino_seg_agreed", False)


def check_all_ranks(error: BaseException | None, rank: int = 0, world_size: int = 1) -> None:
    """A collective that ends a failed run on every rank at once, so no rank waits in a later collective for one
    that has gone. Each rank passes the exception its own work raised, or None. When any rank failed, every rank
    raises: a failed rank its own exception, the others RankFailed naming the first failed rank and the first line
    of its error. A RankFailed passed in (a rank that stopped on learning of another's failure) is no cause.
    Without a process group `error`, if any, is raised as it is."""
    if world_size == 1 or not _group_ready():
        if error is not None:
            raise error
        return
    cause = None
    if error is not None and not isinstance(error, RankFailed):
        cause = first_line(error) if isinstance(error, UserError) else f"{type(error).__name__}: {first_line(error)}"
    states = all_gather_objects((error is not None, cause))  # [(failed, cause)] in rank order
    if not any(failed for failed, _ in states):
        return
    if cause is not None:
        raise _agreed(error)
    first = next(((r, c) for r, (_, c) in enumerate(states) if c is not None), None)
    if first is None:
        raise _agreed(RankFailed(f"process {rank} of {world_size} stopped: another process failed"))
    raise _agreed(RankFailed(f"process {first[0]} of {world_size} failed: {first[1]}"))
