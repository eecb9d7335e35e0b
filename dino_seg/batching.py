"""Inference input ahead of the model: images batched by size and decoded in DataLoader workers, a prefetch thread."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from .errors import UserError

T = TypeVar("T")


def size_batches(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Item indices grouped by equal key (e.g. the (H, W) an image is resized to) into batches of at most
    `batch_size`, groups in the order of their first item, items in order within a group: deterministic."""
    if batch_size < 1:
        raise UserError(f"--batch_size: expected at least 1, got {batch_size}")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


@dataclass
class Batch(Generic[T]):
    """One batch: `tensor` (B, ...) stacks the items `indices` that loaded; `extras` holds what the loader
    returned beside each tensor; `failed` maps the indices that did not load to their one-line error."""

    indices: list[int]
    tensor: torch.Tensor | None
    extras: list[T] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class _Loaded(Dataset):
    """Item i: (i, load(items[i])) or (i, the error's message) when it raises ValueError (unreadable file)."""

    def __init__(self, items: Sequence, load: Callable) -> None:
        self.items = items
        self.load = load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        try:
            return index, self.load(self.items[index]), None
        except ValueError as err:  # ImageError and the like: reported per item, the run goes on
            return index, None, (str(err).splitlines() or [type(err).__name__])[0]


def _collate(rows: list) -> list[Batch]:
    """One Batch per tensor shape among the rows: normally one; more only where a size key was wrong (an image
    whose header misstates its decoded size), which then costs a smaller batch, never an error."""
    ok = [(i, value) for i, value, error in rows if error is None]
    failed = {i: error for i, _, error in rows if error is not None}
    shapes: dict[tuple, list[tuple[int, object]]] = {}
    for i, value in ok:
        tensor = value[0] if isinstance(value, tuple) else value
        shapes.setdefault(tuple(tensor.shape), []).append((i, value))
    batches = [Batch(indices=[i for i, _ in group],
                     tensor=torch.stack([v[0] if isinstance(v, tuple) else v for _, v in group]),
                     extras=[v[1] if isinstance(v, tuple) else None for _, v in group]) for group in shapes.values()]
    if not batches:
        return [Batch(indices=[], tensor=None, failed=failed)]
    batches[0].failed = failed
    return batches


def batched(items: Sequence, load: Callable[[object], torch.Tensor | tuple[torch.Tensor, object]],
            keys: Sequence[Hashable], *, batch_size: int = 1, num_workers: int = 0,
            prefetch_factor: int = 2) -> Iterator[Batch]:
    """Batches of `load(item)` tensors (optionally `(tensor, extra)` pairs) grouped by `keys` (one per item,
    equal keys meaning equal tensor shapes), loaded by `num_workers` worker processes while the caller works
    on earlier batches (0: in this process). `load` must be picklable (a module-level function or a
    functools.partial of one) when workers are used."""
    loader = DataLoader(_Loaded(items, load), batch_sampler=size_batches(keys, batch_size),
                        num_workers=num_workers, collate_fn=_collate,
                        prefetch_factor=prefetch_factor if num_workers > 0 else None,
                        persistent_workers=False)
    for batches in loader:
        yield from batches


_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of `items`, produced by a background thread up to `depth` ahead of the consumer: frame
    decoding (I/O and OpenCV release the GIL) overlaps the backbone. An exception in the producer is raised
    here, in order; stopping early (break, an error downstream) stops the producer at its next item."""
    if depth < 1:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put((_DONE, None))
        except BaseException as err:  # handed to the consumer, raised there
            slots.put((_DONE, err))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, err = slots.get()
            if item is _DONE:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            with contextlib.suppress(queue.Empty):
                slots.get_nowait()
            worker.join(timeout=0.05)
