"""Seeding Python, NumPy and torch, and the per-epoch seeds that make resumed runs draw like uninterrupted ones."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one process for one epoch: re-seeding at every epoch start is what makes a
    resumed run draw the same random numbers (crops, drop-path masks) as the uninterrupted one."""
    state = np.random.SeedSequence([seed % 2**64, epoch, rank, 1]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
