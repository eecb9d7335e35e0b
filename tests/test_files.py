"""Atomic writers (dino_seg.files, train.checkpoint, train.logs): permissions, stale temporary files, full disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from dino_seg import files
from train.checkpoint import save_checkpoint
from train.logs import append_record, trim_records


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    files.save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    files.save_npy(tmp_path / "a.npy", np.zeros(3))
    files.save_text(tmp_path / "a.csv", "x\n")
    save_checkpoint({"w": torch.ones(2)}, tmp_path / "checkpoint.pth")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any other file of the user gets
    assert _mode(plain) == expected
    for name in ("a.png", "a.npy", "a.csv", "checkpoint.pth"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.npy", "a.png", "checkpoint.pth", "plain.txt"]


def test_logs_keep_their_mode_when_trimmed_on_resume(tmp_path, umask):
    umask(0o022)
    log = tmp_path / "metrics.jsonl"
    for it in range(4):
        append_record(log, {"it": it})
    os.chmod(log, 0o640)
    assert trim_records(log, lambda r: r["it"] < 2) == 2
    assert _mode(log) == 0o640
    assert log.read_text() == '{"it": 0}\n{"it": 1}\n'
