"""What produced a results folder (weights, model, settings), recorded beside the results and compared on resume."""

from __future__ import annotations

import json
from pathlib import Path

from dino_seg.errors import UserError
from dino_seg.files import cached_file_digest, save_text

PROVENANCE_FILE = "provenance.json"


def weights_identity(source: str, presets: dict | tuple = ()) -> str:
    """A stable name of the weights: `preset <name>` for a preset, `sha256 <digest>` of a file's content (so a
    renamed or moved file still matches and a retrained one does not), `random` for random weights."""
    if not source:
        return "random"
    if source in presets:
        return f"preset {source}"
    return f"sha256 {cached_file_digest(Path(source).expanduser())}"


def read_provenance(folder: str | Path) -> dict | None:
    """The recorded provenance of a results folder, None if there is none; raises ValueError if unreadable."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); remove it or pass --overwrite") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise UserError(f"{path}: not a provenance record; remove it or pass --overwrite")
    return record


def write_provenance(folder: str | Path, settings: dict, sequences: list[str]) -> None:
    """Record `settings` and the sequences complete under them (atomically)."""
    record = {"settings": settings, "sequences": sequences}
    save_text(Path(folder) / PROVENANCE_FILE, json.dumps(record, indent=2, default=str) + "\n")


def differences(recorded: dict, current: dict) -> list[str]:
    """`key recorded -> current` for every setting that differs (a setting missing on one side counts)."""
    out = []
    for key in list(recorded) + [k for k in current if k not in recorded]:
        old, new = recorded.get(key, "unset"), current.get(key, "unset")
        if old != new:
            out.append(f"{key} {old} -> {new}")
    return out


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"provenance.rank{rank}.json"


def write_rank_provenance(folder: str | Path, settings: dict, sequences: list[str], rank: int) -> None:
    """Under a multi-process run, rank `rank` records the items it completed in its own file (one writer per
    file), so an interrupted run resumes every rank's work; rank 0 folds them into provenance.json at the end."""
    record = {"settings": settings, "sequences": sequences}
    save_text(_rank_file(Path(folder), rank), json.dumps(record, indent=2, default=str) + "\n")


def rank_sequences(folder: str | Path, settings: dict) -> list[str]:
    """Items recorded by the ranks of an interrupted multi-process run under the same `settings`."""
    found: list[str] = []
    for path in sorted(Path(folder).glob("provenance.rank*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a rank killed mid-write leaves no file (written whole): an unreadable one is foreign
        if isinstance(record, dict) and record.get("settings") == json.loads(json.dumps(settings, default=str)):
            found += [str(n) for n in record.get("sequences", []) if str(n) not in found]
    return found


def remove_rank_provenance(folder: str | Path) -> None:
    """Drop the per-rank records once provenance.json holds their items."""
    for path in Path(folder).glob("provenance.rank*.json"):
        path.unlink(missing_ok=True)
