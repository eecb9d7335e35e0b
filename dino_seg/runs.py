"""Run logs of `python -m train` and `eval.linear` (JSON lines, written and trimmed on resume) and reading a run
folder: epoch log, per-iteration metrics, checkpoints, and the feature evaluations (k-NN while training,
eval.knn's knn.json, eval.linear's log) (torch-free)."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import UserError
from .files import NoSpaceError, atomic_path, is_no_space

EPOCH_LOG = "log.txt"  # one JSON line per epoch: train_loss, train_lr, train_wd, ..., epoch
METRICS_LOG = "metrics.jsonl"  # one JSON line per iteration: it, epoch, loss, lr, wd, momentum, ...
LATEST_CHECKPOINT = "checkpoint.pth"
KNN_KEYS = ("knn_top1", "knn_top5")  # log.txt fields of epochs evaluated with --knn_data_path
KNN_RESULTS = "knn.json"  # written by `python -m eval.knn --output_dir`
LINEAR_CHECKPOINT = "checkpoint.pth.tar"  # written by `python -m eval.linear`
LINEAR_KEYS = ("test_acc1", "test_acc5")  # eval.linear's log.txt fields of validated epochs
_NUMBERED = re.compile(r"^checkpoint(\d{4,})\.pth$")


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


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint of a run: `epoch` is the 0-based epoch after which a numbered checkpoint
    (checkpointNNNN.pth) was saved, None for the latest one (checkpoint.pth)."""

    path: Path
    epoch: int | None
    size_bytes: int
    modified: float  # seconds since the epoch (file modification time)

    @property
    def is_latest(self) -> bool:
        return self.epoch is None


def _run_dir(output_dir: str | Path) -> Path:
    folder = Path(output_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such training output folder")
    return folder


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file. A missing file gives [] (a run that has not logged yet), and a
    malformed last line is ignored (a write in progress); a malformed line elsewhere raises ValueError."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise UserError(f"{path}: line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def read_epoch_log(output_dir: str | Path) -> list[dict]:
    """The run's `log.txt` records, one per finished epoch, in order."""
    return read_jsonl(_run_dir(output_dir) / EPOCH_LOG)


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The run's `metrics.jsonl` records, one per iteration (`it`, `epoch`, `loss`, `lr`, `wd`,
    `momentum`, `teacher_temp`, `teacher_entropy`, `kl`), in order."""
    return read_jsonl(_run_dir(output_dir) / METRICS_LOG)


def series(records: list[dict], key: str, x: str = "it") -> tuple[list[float], list[float]]:
    """(x values, values of `key`) over the records that have both as numbers: ready to plot."""
    xs, ys = [], []
    for r in records:
        a, b = r.get(x), r.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            xs.append(float(a))
            ys.append(float(b))
    return xs, ys


def list_checkpoints(output_dir: str | Path) -> list[CheckpointFile]:
    """Checkpoints of the run: numbered ones by epoch, then the latest (checkpoint.pth) if present.
    Temporary files of a save in progress are not listed."""
    folder = _run_dir(output_dir)
    found = []
    for path in folder.iterdir():
        match = _NUMBERED.match(path.name)
        if (match or path.name == LATEST_CHECKPOINT) and path.is_file():
            st = path.stat()
            found.append(CheckpointFile(path, int(match.group(1)) if match else None, st.st_size, st.st_mtime))
    return sorted(found, key=lambda c: (c.epoch is None, c.epoch or 0))


def knn_epochs(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{"knn_top1": (epochs, %), "knn_top5": (epochs, %)} of the epoch-log records that have them
    (empty when the run was trained without --knn_data_path)."""
    found = {key: series(records, key, x="epoch") for key in KNN_KEYS}
    return {key: xy for key, xy in found.items() if xy[0]}


def read_knn_results(folder: str | Path) -> dict[int, dict[str, float]] | None:
    """{k: {"top1": %, "top5": %}} of the folder's knn.json, None without one."""
    path = Path(folder) / KNN_RESULTS
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    try:
        return {int(k): {m: float(v[m]) for m in ("top1", "top5")} for k, v in data.items()
                if k.isdigit() and isinstance(v, dict)}
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: expected {{\"<k>\": {{\"top1\": %, \"top5\": %}}, ...}} as eval.knn writes it") from None


def read_linear_log(folder: str | Path) -> list[dict]:
    """The validated epochs (with test_acc1) of an eval.linear output folder's log.txt, [] for other folders."""
    folder = Path(folder)
    if not (folder / LINEAR_CHECKPOINT).is_file() and not (folder / EPOCH_LOG).is_file():
        return []
    return [r for r in read_jsonl(folder / EPOCH_LOG) if "test_acc1" in r]
