"""Models of the app: loaded once per (source, arch, patch size, device) and version of the file, cached and
shared by every tab."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import torch
from torch import nn

from dino_seg.models import is_vit, model_name
from dino_seg.families import PresetUnavailable
from dino_seg.weights import PRESETS, WeightsUnavailable, load_model

from .config import AppConfig
from .paths import check_path

RANDOM_WEIGHTS = "random weights (pipeline check only)"
# The presets with attention, grouped by DINO generation (the dropdown and the banner list them in this order).
PRESET_GROUPS: dict[str, list[str]] = {
    group: [name for name, p in PRESETS.items() if p.family == family and p.arch != "resnet50"]
    for group, family in (("DINO", "dino"), ("DINOv2", "dinov2"), ("DINOv2 with registers", "dinov2_reg"),
                          ("DINOv3", "dinov3"))}
VIT_PRESETS = [name for names in PRESET_GROUPS.values() for name in names]
PRESET_GROUP = {name: group for group, names in PRESET_GROUPS.items() for name in names}

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


MODEL_CACHE_SIZE = 4
_MODELS: OrderedDict[tuple, tuple[tuple, nn.Module]] = OrderedDict()  # model_key + device -> (stamp, model)


def file_stamp(source: str) -> tuple:
    """What tells one version of a weights file from the next: (resolved path, size, modification time in ns).
    A training run rewrites checkpoint.pth in place every epoch; a cache keyed by the path alone would keep
    serving the first epoch's weights. Presets, random weights and missing files are their name."""
    if source == RANDOM_WEIGHTS or source in PRESETS:
        return (source,)
    path = Path(source).expanduser()
    try:
        stat = path.stat()
    except OSError:  # missing or unreadable: loading it says so
        return (source,)
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def weights_identity(choice: str | None, cfg: AppConfig) -> tuple:
    """The key of a weights choice's model in every cache: (source, arch, patch size, device, file stamp)."""
    source, arch, patch = model_key(choice, cfg)
    return source, arch, patch, cfg.device, file_stamp(source)


def _load(source: str, arch: str | None, patch_size: int | None, device: str) -> nn.Module:
    if source == RANDOM_WEIGHTS:
        # Seeded so that every session sees the same random model, without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return load_model(None, arch=arch, patch_size=patch_size, device=device)
    return load_model(source, arch=arch, patch_size=patch_size, device=device)


def clear_models() -> None:
    """Forget every loaded model (tests start from a cold cache)."""
    with _MODEL_LOCK:
        _MODELS.clear()


def get_model(choice: str | None, cfg: AppConfig) -> tuple[nn.Module, str]:
    """The cached model of a weights choice and a description that says what its weights are; a file that
    changed since it was loaded (same path, new size or modification time) is loaded again."""
    source, arch, patch = model_key(choice, cfg)
    if source != RANDOM_WEIGHTS and source not in PRESETS:
        check_path(source, cfg, "weights file")
    key, stamp = (source, arch, patch, cfg.device), file_stamp(source)
    with _MODEL_LOCK:  # two sessions asking at once load it once
        cached = _MODELS.get(key)
        if cached is not None and cached[0] == stamp:
            _MODELS.move_to_end(key)
            model = cached[1]
        else:
            _MODELS.pop(key, None)  # an older version of the file is dropped at once, not kept until evicted
            model = _load(source, arch, patch, cfg.device)
            _MODELS[key] = (stamp, model)
            while len(_MODELS) > MODEL_CACHE_SIZE:
                _MODELS.popitem(last=False)
    return model, describe_model(model, source)


def describe_model(model: nn.Module, source: str) -> str:
    arch = model_name(model)
    if source == RANDOM_WEIGHTS:
        return f"RANDOM weights, {arch} (pipeline check only: not DINO, the maps are meaningless)"
    if source in PRESETS:
        return f"official {PRESET_GROUP.get(source, 'DINO')} weights {source} ({arch})"
    return f"{Path(source).name} ({arch})"


def licence_line(model: nn.Module) -> str | None:
    """The licence line to show while `model` is in use (DINOv3's), None for the others."""
    return getattr(model, "licence", None)


def model_or_error(choice: str | None, cfg: AppConfig) -> tuple[nn.Module, str]:
    """The ViT of a weights choice for a tab's handler; gr.Error when it cannot be had or is a ResNet."""
    try:
        model, description = get_model(choice, cfg)
    except PresetUnavailable as err:
        if PRESETS[model_key(choice, cfg)[0]].gated:  # DINOv3: the library's line (request at URL, put at PATH)
            raise gr.Error(str(err)) from None
        raise gr.Error(f"weights {model_key(choice, cfg)[0]!r} are not available: put the file at "
                       f"{err.cache_path}, pass --pretrained_weights PATH, upload a checkpoint, or pick "
                       f"'{RANDOM_WEIGHTS}'") from None
    except WeightsUnavailable as err:
        raise gr.Error(f"weights {model_key(choice, cfg)[0]!r} are not available: put the file at "
                       f"{err.cache_path}, pass --pretrained_weights PATH, upload a checkpoint, or pick "
                       f"'{RANDOM_WEIGHTS}'") from None
    if not is_vit(model):
        raise gr.Error("ResNet-50 weights have no self-attention or patch features: pick a ViT")
    return model, description
