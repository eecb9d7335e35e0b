"""Checkpoints in the reference DINO format: one safe reader (weights_only) for resuming and for loading
weights, atomic writes, and the `module.` prefix of DistributedDataParallel."""

from __future__ import annotations

import argparse
import re
import zipfile
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_binary

MODULE_PREFIX = "module."


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save `state` to a temporary file next to `path`, then rename it over `path`: a crash
    while saving never leaves a truncated checkpoint behind, and a full disk raises NoSpaceError naming
    `path` (the previous checkpoint stays as it was)."""
    with atomic_binary(path, fsync=True) as f:
        torch.save(state, f)


class CheckpointError(UserError):
    """A checkpoint file that is missing, unreadable, or does not fit the model it is loaded into."""


def load_error_reason(path: str | Path, err: BaseException) -> str:
    """Why torch.load(weights_only=True) refused `path`, in one line, without torch's advice to retry with
    weights_only=False (that would run whatever code the file pickles)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch underlines its advice with terminal codes
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found:
        return (f"unsupported global {found.group(1)}: the file pickles code or objects other than tensors; "
                "refused without running it")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        head = b""
    if head and not head.startswith(b"PK") and head[0] != 0x80:
        shown = head[:16].decode("ascii", "replace")
        return f"not a PyTorch checkpoint: the file starts with {shown!r}, not a zip archive or a pickle"
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return "truncated or corrupt checkpoint: its zip archive is incomplete"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    unpickler = [line.split("WeightsUnpickler error:", 1)[1].strip() for line in lines
                 if "WeightsUnpickler error:" in line]
    lines = unpickler or [line for line in lines if "weights_only" not in line and "torch.load" not in line
                          and "Weights only load failed" not in line] or ["refused by torch.load(weights_only=True)"]
    detail = lines[0]
    return f"{type(err).__name__}: {detail}"


def read_checkpoint(path: str | Path) -> object:
    """torch.load of `path` on the CPU without unpickling code (weights_only): CheckpointError names the
    file and why it was refused. Official DINO checkpoints pickle an argparse.Namespace under `args`: that
    one type is allowed, and nothing ever falls back to unpickling arbitrary code from a downloaded file."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a checkpoint file (.pth)") from None
    except Exception as err:  # torch raises many types for non-checkpoints (pickle, zip, EOF, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({load_error_reason(path, err)})") from None


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict for resuming (read_checkpoint), with an official checkpoint's `args` Namespace
    turned into a dict."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = vars(ckpt["args"])
    return ckpt


def add_prefix(state_dict: dict[str, torch.Tensor], prefix: str = MODULE_PREFIX) -> dict[str, torch.Tensor]:
    """Keys with `prefix` in front, as a DistributedDataParallel-wrapped module saves them."""
    return {k if k.startswith(prefix) else prefix + k: v for k, v in state_dict.items()}


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = MODULE_PREFIX) -> dict[str, torch.Tensor]:
    """Keys without a leading `prefix`."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_module_state(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, what: str,
                      path: str | Path) -> None:
    """Strict load of `state_dict` (with or without `module.`) into `module`; a mismatch raises one
    clear error instead of the reference's silent partial load (strict=False) that would quietly
    restart a different architecture from scratch."""
    try:
        module.load_state_dict(strip_prefix(state_dict), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{path}: `{what}` does not fit this model (different --arch, --patch_size, --out_dim "
                         f"or head flags?): {detail[:500]}") from None
