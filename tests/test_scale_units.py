"""Sharding (split, gather to rank 0, global counts; two gloo processes), size batching and precision checks."""

from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dino_seg.batching import batched, size_batches
from dino_seg.precision import PrecisionError, autocast, check_precision, cpu_has_bf16
from dino_seg.sharding import GlobalCounter, gather_to_main, shard_indices
from ports import free_port


def test_shard_indices_cover_every_item_once():
    parts = [shard_indices(7, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard_indices(1, 1, 2) == []  # more ranks than items: a rank may get nothing
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        shard_indices(3, 2, 2)


def test_single_process_gather_and_counter():
    assert gather_to_main({0: 1}) == [{0: 1}]
    counter = GlobalCounter()
    assert counter.add() == 1 and counter.add(2) == 3 and counter.value() == 3


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        counter = GlobalCounter()
        mine = {i: (i * i, rank) for i in shard_indices(5, rank, world)}
        for _ in mine:
            counter.add()
        dist.barrier()
        gathered = gather_to_main(mine, rank, world)
        out[rank] = (gathered, counter.value(), counter.local)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_gather_on_rank_0_and_count_globally():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
        out = dict(out)
    gathered, total, local = out[0]
    assert gathered == [{0: (0, 0), 2: (4, 0), 4: (16, 0)}, {1: (1, 1), 3: (9, 1)}]  # in rank order
    assert (total, local) == (5, 3)
    assert out[1] == (None, 5, 2)


def test_size_batches_group_equal_keys_in_order():
    keys = [(2, 3), (4, 4), (2, 3), (2, 3), (4, 4), (1, 1)]
    assert size_batches(keys, 2) == [[0, 2], [3], [1, 4], [5]]
    assert size_batches(keys, 8) == [[0, 2, 3], [1, 4], [5]]
    with pytest.raises(ValueError, match="--batch_size: expected at least 1, got 0"):
        size_batches(keys, 0)


def _load(item: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
    value, h, w = item
    if value < 0:
        raise ValueError(f"item {value}: unreadable")
    return torch.full((1, h, w), float(value)), value * 10


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_stacks_equal_sizes_and_reports_failures(workers):
    items = [(0, 2, 2), (1, 3, 3), (2, 2, 2), (-1, 2, 2), (4, 3, 3)]
    batches = list(batched(items, partial(_load), [(h, w) for _, h, w in items], batch_size=4,
                           num_workers=workers))
    assert [b.indices for b in batches] == [[0, 2], [1, 4]]
    assert batches[0].failed == {3: "item -1: unreadable"} and batches[1].failed == {}
    assert batches[0].tensor.shape == (2, 1, 2, 2) and batches[1].tensor.shape == (2, 1, 3, 3)
    assert batches[1].tensor[:, 0, 0, 0].tolist() == [1.0, 4.0]
    assert batches[0].extras == [0, 20]


def test_precision_fp32_is_exact_and_cpu_refusals_are_one_line():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 8)
    with autocast("fp32", "cpu"):
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    with pytest.raises(PrecisionError, match=r"^--precision fp16: not supported on CPU"):
        check_precision("fp16", "cpu")
    with pytest.raises(PrecisionError, match=r"^--precision fp8: expected one of fp32, bf16, fp16$"):
        check_precision("fp8", "cpu")


def test_precision_bf16_on_cpu_runs_in_bfloat16_or_is_refused():
    layer = torch.nn.Linear(8, 8)
    if not cpu_has_bf16():
        with pytest.raises(PrecisionError, match="this CPU has no bfloat16 instructions"):
            autocast("bf16", "cpu")
        return
    with autocast("bf16", "cpu"):
        assert layer(torch.randn(4, 8)).dtype == torch.bfloat16


def test_prefetched_keeps_order_raises_in_order_and_stops_early():
    from dino_seg.batching import prefetched

    assert list(prefetched(iter(range(7)), depth=2)) == list(range(7))
    assert list(prefetched(range(3), depth=0)) == [0, 1, 2]

    def failing():
        yield 1
        yield 2
        raise ValueError("frame 3 unreadable")

    got = []
    with pytest.raises(ValueError, match="frame 3 unreadable"):
        for item in prefetched(failing(), depth=1):
            got.append(item)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetched(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the consumer stops: the producer stops within a few items
    count = len(produced)
    import time
    time.sleep(0.3)
    assert len(produced) == count <= 3 + 2 + 2
