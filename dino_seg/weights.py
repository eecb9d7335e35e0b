"""Loading DINO weights from any source: official files, our training checkpoints, or preset names."""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import ARCHS, VIT_WIDTHS, build_backbone

_BASE_URL = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class Preset:
    """An official DINO backbone release."""

    name: str
    url: str
    arch: str
    patch_size: int | None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _preset(name: str, stem: str, arch: str, patch_size: int | None) -> Preset:
    return Preset(name, f"{_BASE_URL}/{stem}/{stem}.pth", arch, patch_size)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _preset("dino_vits16", "dino_deitsmall16_pretrain", "vit_small", 16),
        _preset("dino_vits8", "dino_deitsmall8_pretrain", "vit_small", 8),
        # "The model used for visualizations in our paper" (video_generation.py): ViT-S/8 trained 300 epochs.
        _preset("dino_vits8_300ep", "dino_deitsmall8_300ep_pretrain", "vit_small", 8),
        _preset("dino_vitb16", "dino_vitbase16_pretrain", "vit_base", 16),
        _preset("dino_vitb8", "dino_vitbase8_pretrain", "vit_base", 8),
        _preset("dino_resnet50", "dino_resnet50_pretrain", "resnet50", None),
    )
}


class WeightsError(ValueError):
    """Weights that cannot be read or do not fit the requested architecture."""


class WeightsUnavailable(WeightsError):
    """A preset that is neither cached nor downloadable (offline)."""

    def __init__(self, message: str, url: str, cache_path: Path) -> None:
        super().__init__(message)
        self.url = url
        self.cache_path = cache_path


def preset_cache_path(name: str) -> Path:
    """Where a preset's file lives in the torch hub cache (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / PRESETS[name].filename


def fetch_preset(name: str, progress: bool = True) -> Path:
    """Path of a preset's weights, downloading them into the torch hub cache once."""
    preset = PRESETS[name]
    path = preset_cache_path(name)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(preset.url, tmp, progress=progress)
        # Verify before the file takes its final name: a truncated or foreign download must not
        # be cached as the preset. The releases publish no checksum, so check the content.
        sd = _extract_backbone(_read_checkpoint(Path(tmp)), "teacher", Path(tmp))
        arch, patch = infer_arch(sd, source=preset.url)
        if (arch, patch) != (preset.arch, preset.patch_size):
            raise WeightsError(f"{preset.url}: downloaded weights are {arch}/{patch}, expected "
                               f"{preset.arch}/{preset.patch_size}")
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise WeightsUnavailable(
            f"cannot download preset {name!r} from {preset.url} ({_reason(err)}); download it elsewhere and "
            f"put it at {path}, or pass --pretrained_weights PATH to a local file",
            preset.url, path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason).splitlines()[0][:120] or type(err).__name__


def _read_checkpoint(path: Path) -> object:
    try:
        # Official full checkpoints pickle an argparse.Namespace under "args": allow that one type,
        # and never fall back to unpickling arbitrary code from a downloaded file.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a folder, expected a checkpoint file (.pth)") from None
    except Exception as err:  # torch raises many types for non-checkpoints (pickle, zip, EOF, ...)
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({_reason(err)})") from None


def _extract_backbone(checkpoint: object, checkpoint_key: str, source: Path | str) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{source}: expected a state dict or a training checkpoint, got {type(checkpoint).__name__}")
    sd = checkpoint
    if checkpoint_key and checkpoint_key in sd:
        sd = sd[checkpoint_key]
    elif any(k in sd for k in ("teacher", "student")):
        raise WeightsError(f"{source}: --checkpoint_key {checkpoint_key!r} not found; the checkpoint has "
                           f"{', '.join(k for k in ('teacher', 'student') if k in checkpoint)}")
    elif "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{source}: no tensor state dict found (keys: {', '.join(list(map(str, checkpoint))[:8])})")
    clean: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        # DDP adds "module.", the multi-crop wrapper "backbone."; "head." is the DINO projection head.
        for prefix in ("module.", "backbone."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith("head.") or key.startswith("fc."):
            continue
        clean[key] = value
    if not clean:
        raise WeightsError(f"{source}: the checkpoint holds no backbone weights")
    return clean


def infer_arch(state_dict: dict[str, torch.Tensor], source: Path | str = "weights") -> tuple[str, int | None]:
    """(arch, patch_size) of a clean backbone state dict."""
    if "pos_embed" in state_dict and "patch_embed.proj.weight" in state_dict:
        width = state_dict["pos_embed"].shape[-1]
        for arch, (dim, _) in VIT_WIDTHS.items():
            if dim == width:
                return arch, int(state_dict["patch_embed.proj.weight"].shape[-1])
        raise WeightsError(f"{source}: ViT of width {width} is not one of {', '.join(VIT_WIDTHS)}")
    if "conv1.weight" in state_dict and "layer4.2.conv3.weight" in state_dict:
        return "resnet50", None
    raise WeightsError(f"{source}: cannot tell the architecture from the weights; pass --arch and --patch_size")


def load_state_dict(source: str | Path, checkpoint_key: str = "teacher") -> dict[str, torch.Tensor]:
    """A clean backbone state dict (no `module.`/`backbone.` prefixes, no head) from a preset or a file."""
    source = str(source)
    path = fetch_preset(source) if source in PRESETS else Path(source).expanduser()
    if source not in PRESETS and not path.exists():
        raise WeightsError(f"--pretrained_weights: {source}: no such file and not a preset "
                           f"(presets: {', '.join(PRESETS)})")
    return _extract_backbone(_read_checkpoint(path), checkpoint_key, path)


def load_model(
    pretrained_weights: str | Path | None,
    arch: str | None = None,
    patch_size: int | None = None,
    checkpoint_key: str = "teacher",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A backbone in eval mode with frozen weights from a preset, an official file or our checkpoint.

    Empty `pretrained_weights` gives random weights of `arch` (vit_small/16 by default): callers
    must say so, since such a model is only good for checking the pipeline.
    """
    if not pretrained_weights:
        model = build_backbone(arch or "vit_small", patch_size or 16)
    else:
        sd = load_state_dict(pretrained_weights, checkpoint_key)
        found_arch, found_patch = infer_arch(sd, source=pretrained_weights)
        if arch and arch not in ARCHS:
            raise WeightsError(f"--arch: unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")
        if (arch and arch != found_arch) or (patch_size and found_patch and patch_size != found_patch):
            raise WeightsError(f"{pretrained_weights}: the weights are {found_arch}"
                               f"{'/' + str(found_patch) if found_patch else ''}, but --arch {arch} "
                               f"--patch_size {patch_size} was asked for")
        grid = 224
        if found_patch:  # keep the checkpoint's positional grid: the reference interpolates from it
            grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) * found_patch
        model = build_backbone(found_arch, found_patch or 16, img_size=grid)
        missing, unexpected = _diff_keys(model.state_dict(), sd)
        if missing or unexpected:
            raise WeightsError(f"{pretrained_weights}: weights do not fit {found_arch}: missing keys "
                               f"{_few(missing)}; unexpected keys {_few(unexpected)}")
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as err:
            raise WeightsError(f"{pretrained_weights}: weights do not fit {found_arch}: "
                               f"{_reason(err).strip()}") from None
    return model.to(device).eval().requires_grad_(False)


def _diff_keys(expected: dict, given: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def _few(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
