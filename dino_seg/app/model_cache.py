"""Models of the app: loaded once per (source, arch, patch size, device), cached and shared by every tab."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import gradio as gr
import torch
from torch import nn

from dino_seg.models import is_vit, model_name
from dino_seg.weights import PRESETS, WeightsUnavailable, load_model

from .config import AppConfig

RANDOM_WEIGHTS = "random weights (pipeline check only)"
VIT_PRESETS = [name for name, preset in PRESETS.items() if preset.arch.startswith("vit")]

_MODEL_LOCK = threading.Lock()


def model_key(choice: str | None, cfg: AppConfig) -> tuple[str, str | None, int | None]:
    """(source, arch, patch_size) of a weights choice. --arch/--patch_size apply to random weights and
    are checked against the start-up weights; other files and presets say what they are."""
    choice = (choice or "").strip() or cfg.weights
    if choice == RANDOM_WEIGHTS or choice == "random":
        default = PRESETS.get(cfg.weights)
        arch = cfg.arch or (default.arch if default and default.arch.startswith("vit") else "vit_small")
        return RANDOM_WEIGHTS, arch, cfg.patch_size or (default.patch_size if default else None) or 16
    if choice == cfg.weights:
        return choice, cfg.arch, cfg.patch_size
    return choice, None, None


@functools.lru_cache(maxsize=4)
def _load(source: str, arch: str | None, patch_size: int | None, device: str) -> nn.Module:
    if source == RANDOM_WEIGHTS:
        # Seeded so that every session sees the same random model, without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return load_model(None, arch=arch, patch_size=patch_size, device=device)
    return load_model(source, arch=arch, patch_size=patch_size, device=device)


def get_model(choice: str | None, cfg: AppConfig) -> tuple[nn.Module, str]:
    """The cached model of a weights choice and a description that says what its weights are."""
    source, arch, patch = model_key(choice, cfg)
    with _MODEL_LOCK:  # two sessions asking at once load it once
        model = _load(source, arch, patch, cfg.device)
    return model, describe_model(model, source)


def describe_model(model: nn.Module, source: str) -> str:
    arch = model_name(model)
    if source == RANDOM_WEIGHTS:
        return f"RANDOM weights, {arch} (pipeline check only: not DINO, the maps are meaningless)"
    if source in PRESETS:
        return f"official DINO weights {source} ({arch})"
    return f"{Path(source).name} ({arch})"


def model_or_error(choice: str | None, cfg: AppConfig) -> tuple[nn.Module, str]:
    """The ViT of a weights choice for a tab's handler; gr.Error when it cannot be had or is a ResNet."""
    try:
        model, description = get_model(choice, cfg)
    except WeightsUnavailable as err:
        raise gr.Error(f"weights {model_key(choice, cfg)[0]!r} are not available: put the file at "
                       f"{err.cache_path}, pass --pretrained_weights PATH, upload a checkpoint, or pick "
                       f"'{RANDOM_WEIGHTS}'") from None
    if not is_vit(model):
        raise gr.Error("ResNet-50 weights have no self-attention or patch features: pick a ViT")
    return model, description
