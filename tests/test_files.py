"""Atomic writers (dino_seg.files, dino_seg.checkpoint, dino_seg.runs): permissions, stale temporary files, full disk."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from dino_seg import files
from dino_seg.checkpoint import save_checkpoint
from dino_seg.runs import append_record, trim_records


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


_REAL_OPEN = open


class FullDisk:
    """`open` for dino_seg.files whose files accept `room` bytes, then raise OSError(ENOSPC) like a full disk."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        f = _REAL_OPEN(path, mode, *args, **kwargs)
        if not set(mode) & set("wax+"):
            return f
        disk = self

        class Limited:
            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, data):
                if len(data) > disk.room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.room -= len(data)
                return f.write(data)

        return Limited()


def test_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(files, "open", FullDisk(room=1500), raising=False)
    with pytest.raises(files.NoSpaceError) as info:
        save_checkpoint({"epoch": 2, "w": torch.ones(1000)}, path)
    # torch.save re-raises the write error as a RuntimeError ("enforce fail at inline_container.cc"):
    # the message still says what happened, in one line.
    assert str(info.value) == f"no space left on device while writing {path}"
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # does not compress
    for write in (lambda p: files.save_png(p, noise), lambda p: files.save_npy(p, np.zeros(1000)),
                  lambda p: files.save_text(p, "x" * 2000)):
        monkeypatch.setattr(files, "open", FullDisk(room=1500), raising=False)
        target = tmp_path / "out.bin"
        with pytest.raises(files.NoSpaceError, match=f"^no space left on device while writing {target}$"):
            write(target)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_full_disk_while_logging_names_the_log(tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    monkeypatch.setattr("builtins.open", FullDisk(room=0))
    with pytest.raises(files.NoSpaceError, match=f"^no space left on device while writing {log}$"):
        append_record(log, {"epoch": 0})


def test_cached_file_digest_is_reused_until_the_file_changes(tmp_path, monkeypatch):
    import json
    import os

    from dino_seg import files

    cache = tmp_path / "cache"
    monkeypatch.setenv("DINO_SEG_CACHE_DIR", str(cache))
    target = tmp_path / "w.pth"
    target.write_bytes(b"abc")
    want = files.file_digest(target)
    assert files.cached_file_digest(target) == want
    entries = json.loads((cache / "digests.json").read_text())
    assert list(entries.values()) == [want]
    calls = []
    monkeypatch.setattr(files, "file_digest", lambda *a, **k: calls.append(a) or "recomputed")
    assert files.cached_file_digest(target) == want and calls == []  # same path, size and mtime: cached
    target.write_bytes(b"abcd")  # another size
    assert files.cached_file_digest(target) == "recomputed"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, newer mtime
    assert files.cached_file_digest(target) == "recomputed" and len(calls) == 2
    (cache / "digests.json").write_text("not json")  # an unreadable cache is ignored and rewritten
    monkeypatch.setattr(files, "file_digest", lambda *a, **k: "again")
    assert files.cached_file_digest(target) == "again"
    assert "again" in (cache / "digests.json").read_text()
