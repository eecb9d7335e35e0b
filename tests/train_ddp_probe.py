"""Run `python -m train` under torchrun and also dump each rank's weights after every epoch.

Usage: torchrun --nproc_per_node 2 tests/train_ddp_probe.py PROBE_DIR [train flags...]

The real training runs unchanged; `train_one_epoch` is only wrapped to observe the models it trained
(rank 0 is the only process that writes checkpoints, so the other ranks' weights are otherwise invisible).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import train.main as train_main

_real_train_one_epoch = train_main.train_one_epoch


def _observed_train_one_epoch(**kwargs):
    result = _real_train_one_epoch(**kwargs)
    rank = int(os.environ["RANK"])
    torch.save({
        "student": kwargs["student_core"].state_dict(),
        "teacher": kwargs["teacher"].state_dict(),
        "center": kwargs["dino_loss"].center.clone(),
        "stats": result.stats,
    }, Path(PROBE_DIR) / f"rank{rank}_epoch{kwargs['epoch']}.pt")
    return result


if __name__ == "__main__":
    PROBE_DIR = sys.argv[1]
    train_main.train_one_epoch = _observed_train_one_epoch
    raise SystemExit(train_main.main(sys.argv[2:]))
