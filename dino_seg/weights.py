"""Loading DINO weights from any source: official files, our training checkpoints, or preset names."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, read_checkpoint
from .errors import UserError
from .files import AtomicFile, file_digest
from .models import ARCHS, VIT_WIDTHS, build_backbone

_BASE_URL = "https://dl.fbaipublicfiles.com/dino"


@dataclass(frozen=True)
class Preset:
    """An official backbone release of any DINO generation."""

    name: str
    url: str  # "" for licence-gated weights, never downloaded (DINOv3)
    arch: str  # DINO: vit_small / vit_base / resnet50; later generations: their hub name
    patch_size: int | None
    family: str = "dino"  # dino, dinov2, dinov2_reg or dinov3 (dino_seg.families)
    file: str = ""  # the file name, where there is no URL to take it from

    @property
    def filename(self) -> str:
        return self.file or self.url.rsplit("/", 1)[-1]

    @property
    def gated(self) -> bool:
        """Licence-gated: resolves only to a file the user put in the hub cache."""
        return not self.url


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
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
for _size in ("vits", "vitb", "vitl", "vitg"):
    # DINOv2 (Apache-2.0): downloaded once like DINO's, from the same file server, checked by structure.
    _stem = f"dinov2_{_size}14"
    PRESETS[_stem] = Preset(_stem, f"{_DINOV2_URL}/{_stem}/{_stem}_pretrain.pth", _stem, 14, "dinov2")
    PRESETS[_stem + "_reg"] = Preset(_stem + "_reg", f"{_DINOV2_URL}/{_stem}/{_stem}_reg4_pretrain.pth",
                                     _stem + "_reg", 14, "dinov2_reg")
# DINOv3 (DINOv3 License, licence-gated): the official hub's file names (dinov3/hub/backbones.py: arch, hash);
# never downloaded, the name resolves only to the file already in the torch hub cache.
for _name, _hash in (("dinov3_vits16", "08c60483"), ("dinov3_vits16plus", "4057cbaa"), ("dinov3_vitb16", "73cec8be"),
                     ("dinov3_vitl16", "8aa4cbdd"), ("dinov3_vith16plus", "7c1da9a5"), ("dinov3_vit7b16", "a955f4ea")):
    PRESETS[_name] = Preset(_name, "", _name, 16, "dinov3", f"{_name}_pretrain_lvd1689m-{_hash}.pth")


# What is known of the released files' content (GUIDE: MD5 prefixes as pinned by open-metric-learning's model zoo,
# and ViT-S/8's size): checked before a download takes its final name and whenever a cached file is used.
# Presets missing here have no pinned digest: only their structure (architecture, patch size, keys) is checked.
PINNED: dict[str, tuple[str, int | None]] = {
    "dino_vits16": ("cf0f22", None),
    "dino_vits8": ("230cd5", 86_728_949),
    "dino_vitb16": ("552daf", None),
    "dino_vitb8": ("556550", None),
}
_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of cached files already checked


class WeightsError(UserError):
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


def digest_mismatch(name: str, path: Path) -> str | None:
    """Why `path` is not preset `name`'s released file by its pinned size and MD5 prefix; None when it matches
    or when no digest is pinned for that preset."""
    if name not in PINNED:
        return None
    prefix, size = PINNED[name]
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"{actual:,} bytes, expected {size:,}"
    md5 = file_digest(path, "md5")
    if not md5.startswith(prefix):
        return f"MD5 {md5[:12]}..., expected one beginning with {prefix}"
    return None


def _check_cached(name: str, path: Path) -> None:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    reason = digest_mismatch(name, path)
    if reason:
        raise WeightsError(f"cached preset {name} at {path} is not the released file ({reason}): delete it to "
                           "download it again, or pass --pretrained_weights PATH")
    _VERIFIED.add(key)


def fetch_preset(name: str, progress: bool = True) -> Path:
    """Path of a preset's weights, downloading them into the torch hub cache once.

    A download takes its final name only after its size and MD5 prefix match the pinned ones (PINNED) and its
    structure matches the preset; a cached file is checked against PINNED too, never silently used otherwise.
    Presets without a pinned digest get the structural check only (`digest_pinned(name)` says which).
    """
    preset = PRESETS[name]
    if preset.family != "dino":
        from .families import fetch_family_preset

        return fetch_family_preset(name, progress)
    path = preset_cache_path(name)
    if path.is_file():
        _check_cached(name, path)
        return path
    target = AtomicFile(path)  # its temp file gets the umask's mode, not mkstemp's private 0600
    tmp = target.tmp
    try:
        torch.hub.download_url_to_file(preset.url, str(tmp), progress=progress)
        # Verify before the file takes its final name: a truncated or foreign download must not
        # be cached as the preset.
        reason = digest_mismatch(name, tmp)
        if reason:
            raise WeightsError(f"{preset.url}: the download is not the released file ({reason}); truncated or "
                               "altered, it was not cached")
        sd = _extract_backbone(_read_checkpoint(tmp), "teacher", tmp)
        arch, patch = infer_arch(sd, source=preset.url)
        if (arch, patch) != (preset.arch, preset.patch_size):
            raise WeightsError(f"{preset.url}: downloaded weights are {arch}/{patch}, expected "
                               f"{preset.arch}/{preset.patch_size}")
        target.commit()
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise WeightsUnavailable(
            f"cannot download preset {name!r} from {preset.url} ({_reason(err)}); download it elsewhere and "
            f"put it at {path}, or pass --pretrained_weights PATH to a local file",
            preset.url, path) from None
    finally:
        target.discard()
    return path


def digest_pinned(name: str) -> bool:
    """Whether preset `name`'s file is checked by content (size, MD5) besides its structure."""
    return name in PINNED


def _reason(err: BaseException) -> str:
    reason = getattr(err, "reason", None) or err
    return str(reason).splitlines()[0][:120] or type(err).__name__


def _read_checkpoint(path: Path) -> object:
    try:
        return read_checkpoint(path)
    except CheckpointError as err:
        raise WeightsError(str(err)) from None


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
    if all(key.startswith("model.") for key in clean):
        # A dino_seg.backbones.Backbone trained by `python -m train --init_weights` wraps its network as "model".
        clean = {key[len("model."):]: value for key, value in clean.items()}
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
    sd = _extract_backbone(_read_checkpoint(path), checkpoint_key, path)
    if source in PRESETS and PRESETS[source].family != "dino":
        from .families import preset_structure_mismatch

        reason = preset_structure_mismatch(source, sd, path)
        if reason:
            raise WeightsError(f"cached preset {source} at {path} is not its release ({reason}): delete it"
                               + ("" if PRESETS[source].gated else " to download it again"))
    elif source in PRESETS:  # the structural check, for every preset (the only one where no digest is pinned)
        preset = PRESETS[source]
        found = infer_arch(sd, source=path)
        if found != (preset.arch, preset.patch_size):
            raise WeightsError(f"cached preset {source} at {path} holds {found[0]}/{found[1]} weights, expected "
                               f"{preset.arch}/{preset.patch_size}: delete it to download it again")
    return sd


def load_model(
    pretrained_weights: str | Path | None,
    arch: str | None = None,
    patch_size: int | None = None,
    checkpoint_key: str = "teacher",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A backbone in eval mode with frozen weights from a preset, an official file or our checkpoint.

    DINO weights give our DinoVisionTransformer (or ResNet-50) as always; DINOv2 and DINOv3 weights, recognised
    from their keys (dino_seg.families), give a dino_seg.backbones.Backbone, which every library function takes.
    Empty `pretrained_weights` gives random weights of `arch` (vit_small/16 by default): callers
    must say so, since such a model is only good for checking the pipeline.
    """
    if not pretrained_weights:
        model = build_backbone(arch or "vit_small", patch_size or 16)
    else:
        sd = load_state_dict(pretrained_weights, checkpoint_key)
        from .families import adapter_for

        adapter = adapter_for(sd, pretrained_weights)
        if adapter.name == "dino":
            model = build_from_state_dict(sd, pretrained_weights, arch, patch_size)
        else:
            model = adapter.build(sd, pretrained_weights)
            if arch or (patch_size and patch_size != model.patch_size):
                asked = " ".join(f"--{flag} {value}" for flag, value in (("arch", arch), ("patch_size", patch_size))
                                 if value)
                raise WeightsError(f"{pretrained_weights}: the weights are {model.name} ({model.generation}), but "
                                   f"{asked} was asked for (leave --arch and --patch_size out: they are read from "
                                   "the weights)")
    return model.to(device).eval().requires_grad_(False)


def build_from_state_dict(sd: dict[str, torch.Tensor], source: str | Path, arch: str | None = None,
                          patch_size: int | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """A DINO v1 backbone (ViT or ResNet-50) holding a clean state dict; `arch` / `patch_size`, when given,
    must agree with the weights; `drop_path_rate` is for training (stochastic depth)."""
    found_arch, found_patch = infer_arch(sd, source=source)
    if arch and arch not in ARCHS:
        raise WeightsError(f"--arch: unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")
    if (arch and arch != found_arch) or (patch_size and found_patch and patch_size != found_patch):
        asked = " ".join(f"--{flag} {value}" for flag, value in (("arch", arch), ("patch_size", patch_size))
                         if value)
        raise WeightsError(f"{source}: the weights are {found_arch}"
                           f"{'/' + str(found_patch) if found_patch else ''}, but {asked} "
                           "was asked for (leave --arch and --patch_size out to take them from the weights)")
    grid = 224
    if found_patch:  # keep the checkpoint's positional grid: the reference interpolates from it
        grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5)) * found_patch
    model = build_backbone(found_arch, found_patch or 16, img_size=grid, drop_path_rate=drop_path_rate)
    load_strict(model, sd, source, found_arch)
    return model


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: object, what: str,
                error: type[WeightsError] = WeightsError) -> None:
    """A strict load of `sd` into `model`, or one `error` line naming the missing and unexpected keys or the first
    size mismatch (torch's own message starts with a line that names neither)."""
    missing, unexpected = _diff_keys(model.state_dict(), sd)
    if missing or unexpected:
        raise error(f"{source}: weights do not fit {what}: missing keys {_few(missing)}; "
                    f"unexpected keys {_few(unexpected)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                      _reason(err).strip())
        raise error(f"{source}: weights do not fit {what}: {detail}") from None


def _diff_keys(expected: dict, given: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def _few(keys: list[str], n: int = 5) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
