"""Work split across processes: items by rank, per-item results gathered on rank 0, global progress counts."""

from __future__ import annotations

import torch.distributed as dist

from .distributed import _group_ready


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The item indices rank `rank` of `world_size` works on: every world_size-th from `rank` on.

    Striding (not contiguous blocks) spreads neighbouring items, which often cost alike (same folder, same
    size), over all ranks; every index goes to exactly one rank, and the split depends on nothing else."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size} process(es)")
    return list(range(rank, n, world_size))


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
