"""JSON-lines logs of a training run: appending records, and trimming them back on resume."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dino_seg.files import NoSpaceError, atomic_path, is_no_space

EPOCH_LOG = "log.txt"
METRICS_LOG = "metrics.jsonl"


def _clean(value: object) -> object:
    # JSON has no NaN or infinity: write null rather than the non-standard tokens json.dumps emits.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_record(f: IO[str], record: dict) -> None:
    """One JSON line, flushed so a reader (the app) sees it at once."""
    try:
        f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        f.flush()
    except OSError as err:
        if is_no_space(err):
            raise NoSpaceError(getattr(f, "name", "a log file")) from None
        raise


def append_record(path: str | Path, record: dict) -> None:
    """Append one JSON line to `path`."""
    with open(path, "a", encoding="utf-8") as f:
        write_record(f, record)


def trim_records(path: str | Path, keep: Callable[[dict], bool]) -> int:
    """Rewrite `path` (atomically) with only the records `keep` accepts, dropping lines a crash left
    half-written; returns how many records were dropped. A missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and keep(record):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        mode = stat.S_IMODE(path.stat().st_mode)  # the rewritten log keeps the mode it had
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.chmod(tmp, mode)
    return dropped
