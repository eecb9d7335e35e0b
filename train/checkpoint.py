"""Checkpoints in the reference DINO format, written atomically, and read back for resuming."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dino_seg.files import atomic_binary
from dino_seg.weights import load_error_reason

MODULE_PREFIX = "module."


def save_checkpoint(state: dict, path: str | Path) -> None:
    """torch.save `state` to a temporary file next to `path`, then rename it over `path`: a crash
    while saving never leaves a truncated checkpoint behind, and a full disk raises NoSpaceError naming
    `path` (the previous checkpoint stays as it was)."""
    with atomic_binary(path, fsync=True) as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without unpickling code (weights_only). Official DINO checkpoints pickle an
    argparse.Namespace under `args`: that one type is allowed and turned into a dict."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"{path}: cannot read the checkpoint ({load_error_reason(path, err)})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
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
        raise ValueError(f"{path}: `{what}` does not fit this model (different --arch, --patch_size, --out_dim "
                         f"or head flags?): {detail[:500]}") from None
