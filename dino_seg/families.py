"""DINO generations by name: recognise a state dict's family, convert it through timm's filters, build its Backbone."""

from __future__ import annotations

import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import Backbone, DinoV1Backbone, DinoV2Backbone, DinoV3Backbone, ResNetBackbone
from .files import AtomicFile
from .weights import PRESETS, WeightsError, WeightsUnavailable, _extract_backbone, _read_checkpoint, load_strict

DINOV3_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"

# Width -> (size name, heads) of the released models; every DINOv2/v3 head is 64 wide except DINOv3 7B's 128.
DINOV2_SIZES = {384: ("vits", 6), 768: ("vitb", 12), 1024: ("vitl", 16), 1536: ("vitg", 24)}
DINOV3_SIZES = {384: ("vits", 6), 768: ("vitb", 12), 1024: ("vitl", 16), 1280: ("vith", 20), 4096: ("vit7b", 32)}
_DINOV2_TIMM = {"vits": "small", "vitb": "base", "vitl": "large", "vitg": "giant"}


class FamilyError(WeightsError):
    """A state dict no adapter recognises, or that does not fit the family it looks like."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a state dict says about its backbone."""

    family: str  # "dino", "dinov2", "dinov2_reg", "dinov3" or "resnet"
    name: str  # "dinov2_vits14_reg"-style (the official hub name), "vit_small/16" for DINO
    patch_size: int | None
    embed_dim: int
    depth: int
    num_heads: int | None
    num_registers: int
    layout: str  # "official" (the released file's keys) or "timm"
    swiglu: bool = False


def _depth(sd: dict[str, torch.Tensor]) -> int:
    found = [int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _heads(width: int, sizes: dict[int, tuple[str, int]], num_heads: int | None, source: object) -> int:
    if num_heads:
        return num_heads
    if width in sizes:
        return sizes[width][1]
    if width % 64 == 0:
        return width // 64
    raise FamilyError(f"{source}: cannot tell the number of heads of a ViT of width {width}")


class FamilyAdapter:
    """One DINO generation: which state dicts are its own, what they hold, and how to build them."""

    name = ""

    def matches(self, sd: dict[str, torch.Tensor]) -> bool:
        raise NotImplementedError

    def spec(self, sd: dict[str, torch.Tensor], source: object, num_heads: int | None = None) -> BackboneSpec:
        raise NotImplementedError

    def build(self, sd: dict[str, torch.Tensor], source: object, num_heads: int | None = None,
              drop_path_rate: float = 0.0) -> Backbone:
        """The family's backbone holding `sd`; `drop_path_rate` (stochastic depth) is for training."""
        raise NotImplementedError


class DinoV1Adapter(FamilyAdapter):
    """DINO (2021): ViT-S/B (patch 8 or 16) and ResNet-50, our own DinoVisionTransformer."""

    name = "dino"

    def matches(self, sd):
        vit = "pos_embed" in sd and "blocks.0.attn.qkv.weight" in sd and "blocks.0.ls1.gamma" not in sd
        return vit and "reg_token" not in sd or "layer4.2.conv3.weight" in sd

    def spec(self, sd, source, num_heads=None):
        from .models import VIT_WIDTHS
        from .weights import infer_arch

        arch, patch = infer_arch(sd, source=source)
        if arch == "resnet50":
            return BackboneSpec("resnet", "resnet50", None, 2048, 0, None, 0, "official")
        dim, heads = VIT_WIDTHS[arch]
        return BackboneSpec("dino", f"{arch}/{patch}", patch, dim, _depth(sd), heads, 0, "official")

    def build(self, sd, source, num_heads=None, drop_path_rate=0.0):
        from .weights import build_from_state_dict

        model = build_from_state_dict(sd, source, drop_path_rate=drop_path_rate)
        if self.spec(sd, source).family == "resnet":
            return ResNetBackbone(model, "resnet50")
        return DinoV1Backbone(model, f"{model.arch}/{model.patch_size}")


class DinoV2Adapter(FamilyAdapter):
    """DINOv2 (2023): ViT-S/B/L/g with patch 14, layer scale, SwiGLU for g; with or without 4 registers."""

    def __init__(self, registers: bool) -> None:
        self.registers = registers
        self.name = "dinov2_reg" if registers else "dinov2"

    @staticmethod
    def _registers(sd) -> int:
        for key in ("register_tokens", "reg_token"):
            if key in sd:
                return int(sd[key].shape[1])
        return 0

    def matches(self, sd):
        dinov2 = "pos_embed" in sd and "blocks.0.ls1.gamma" in sd and "patch_embed.proj.weight" in sd
        return dinov2 and (self._registers(sd) > 0) == self.registers

    def spec(self, sd, source, num_heads=None):
        width = int(sd["cls_token"].shape[-1])
        patch = int(sd["patch_embed.proj.weight"].shape[-1])
        registers = self._registers(sd)
        swiglu = "blocks.0.mlp.w12.weight" in sd or "blocks.0.mlp.fc1.weight" in sd and \
            sd["blocks.0.mlp.fc2.weight"].shape[1] * 2 == sd["blocks.0.mlp.fc1.weight"].shape[0]
        size = DINOV2_SIZES.get(width, (f"vit{width}", 0))[0]
        name = f"dinov2_{size}{patch}" + ("_reg" if registers else "")
        layout = "official" if "mask_token" in sd else "timm"
        return BackboneSpec(self.name, name, patch, width, _depth(sd), _heads(width, DINOV2_SIZES, num_heads, source),
                            registers, layout, swiglu)

    def build(self, sd, source, num_heads=None, drop_path_rate=0.0):
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        spec = self.spec(sd, source, num_heads)
        # The stored positional grid (37 x 37 at 518 px in the releases) is kept: interpolation happens per input.
        n_pos = sd["pos_embed"].shape[1] - (1 if spec.layout == "official" or not spec.num_registers else 0)
        grid = int(round(n_pos ** 0.5))
        if grid * grid != n_pos:
            raise FamilyError(f"{source}: pos_embed holds {n_pos} patch positions, not a square grid")
        size = DINOV2_SIZES.get(spec.embed_dim, ("vitg" if spec.swiglu else "vits", 0))[0]
        template = f"vit_{_DINOV2_TIMM[size]}_patch14" + ("_reg4" if spec.num_registers else "") + "_dinov2"
        if spec.swiglu != (size == "vitg"):
            raise FamilyError(f"{source}: a DINOv2 ViT of width {spec.embed_dim} with "
                              f"{'SwiGLU' if spec.swiglu else 'an MLP'} is not a released architecture")
        fc1 = sd.get("blocks.0.mlp.w12.weight", sd.get("blocks.0.mlp.fc1.weight"))
        kwargs = dict(img_size=grid * spec.patch_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
                      depth=spec.depth, num_heads=spec.num_heads, mlp_ratio=(fc1.shape[0] + 0.5) / spec.embed_dim,
                      num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate)
        if spec.num_registers:
            kwargs["reg_tokens"] = spec.num_registers
        model = timm.create_model(template, pretrained=False, **kwargs)
        converted = checkpoint_filter_fn(dict(sd), model)  # copies: timm's DINOv2 conversion pops keys
        load_strict(model, converted, source, spec.name, FamilyError)
        return DinoV2Backbone(model.eval(), spec.name)


class DinoV3Adapter(FamilyAdapter):
    """DINOv3 (2025): ViT-S/S+/B/L/H+/7B with patch 16, RoPE and 4 storage tokens, on timm's Eva."""

    name = "dinov3"

    def matches(self, sd):
        official = "storage_tokens" in sd and "rope_embed.periods" in sd
        timm_layout = "reg_token" in sd and "blocks.0.gamma_1" in sd and "pos_embed" not in sd
        return official or timm_layout

    def spec(self, sd, source, num_heads=None):
        width = int(sd["cls_token"].shape[-1])
        patch = int(sd["patch_embed.proj.weight"].shape[-1])
        official = "storage_tokens" in sd
        registers = int(sd["storage_tokens" if official else "reg_token"].shape[1])
        swiglu = "blocks.0.mlp.w1.weight" in sd or "blocks.0.mlp.fc1_g.weight" in sd
        if official and not num_heads:
            num_heads = width // (4 * int(sd["rope_embed.periods"].shape[0]))  # periods: head_dim / 4 of them
        size = DINOV3_SIZES.get(width, (f"vit{width}", 0))[0]
        plus = "plus" if swiglu and size in ("vits", "vitl", "vith") else ""
        name = f"dinov3_{size}{patch}{plus}"
        return BackboneSpec("dinov3", name, patch, width, _depth(sd), _heads(width, DINOV3_SIZES, num_heads, source),
                            registers, "official" if official else "timm", swiglu)

    def build(self, sd, source, num_heads=None, drop_path_rate=0.0):
        import timm
        from timm.models.eva import checkpoint_filter_fn

        spec = self.spec(sd, source, num_heads)
        sd = dict(sd)
        has_bias = "blocks.0.attn.qkv.bias" in sd or "blocks.0.attn.q_bias" in sd
        if spec.layout == "official":
            _apply_bias_masks(sd, source)
        template = "vit_small_plus_patch16_dinov3" if spec.swiglu else "vit_small_patch16_dinov3"
        if spec.embed_dim == 4096:
            template = "vit_7b_patch16_dinov3"
        if has_bias:
            template += "_qkvb"  # keeps the q and v biases (the plain variants drop them)
        hidden = next(sd[k] for k in ("blocks.0.mlp.w1.weight", "blocks.0.mlp.fc1_g.weight", "blocks.0.mlp.fc1.weight")
                      if k in sd)
        model = timm.create_model(
            template, pretrained=False, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
            num_heads=spec.num_heads, num_reg_tokens=spec.num_registers,
            mlp_ratio=(hidden.shape[0] + 0.5) / spec.embed_dim, num_classes=0, global_pool="token",
            drop_path_rate=drop_path_rate)
        converted = checkpoint_filter_fn(sd, model)
        load_strict(model, converted, source, spec.name, FamilyError)
        if spec.layout == "official":
            # The released files store RoPE periods rounded to bfloat16, and the official model loads them into its
            # float32 buffer; timm recomputes them in float32. Use the file's, as the official model does.
            periods = sd["rope_embed.periods"].float()
            if periods.shape != model.rope.periods.shape:
                raise FamilyError(f"{source}: rope_embed.periods has {periods.numel()} entries, expected "
                                  f"{model.rope.periods.numel()}")
            model.rope.periods.copy_(periods)
        return DinoV3Backbone(model.eval(), spec.name)


def _apply_bias_masks(sd: dict[str, torch.Tensor], source: object) -> None:
    """Fold DINOv3's qkv `bias_mask` into the bias: timm keeps q and v biases and a zero k bias."""
    for key in [k for k in sd if k.endswith("attn.qkv.bias_mask")]:
        mask = sd.pop(key)
        bias_key = key[: -len("_mask")]
        third = mask.shape[0] // 3
        if not (torch.all(mask[third: 2 * third] == 0) and torch.all(mask[:third] == 1)
                and torch.all(mask[2 * third:] == 1)):
            raise FamilyError(f"{source}: {key} does not mask exactly the key bias, as DINOv3's does")
        if bias_key in sd:
            sd[bias_key] = sd[bias_key] * mask.to(sd[bias_key].dtype)


ADAPTERS: dict[str, FamilyAdapter] = {}


def register(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add a family adapter under its name (later ones are tried first when recognising)."""
    ADAPTERS[adapter.name] = adapter
    return adapter


for _adapter in (DinoV1Adapter(), DinoV2Adapter(registers=False), DinoV2Adapter(registers=True), DinoV3Adapter()):
    register(_adapter)


def adapter_for(sd: dict[str, torch.Tensor], source: object = "weights") -> FamilyAdapter:
    """The family adapter whose state dicts look like `sd`."""
    for adapter in reversed(list(ADAPTERS.values())):
        if adapter.matches(sd):
            return adapter
    keys = ", ".join(list(sd)[:6])
    raise FamilyError(f"{source}: not a DINO, DINOv2 (with or without registers) or DINOv3 backbone state dict "
                      f"(keys: {keys}{', ...' if len(sd) > 6 else ''})")


def recognise(sd: dict[str, torch.Tensor], source: object = "weights", num_heads: int | None = None) -> BackboneSpec:
    """Family, size, registers and patch of a clean backbone state dict (no --arch needed)."""
    return adapter_for(sd, source).spec(sd, source, num_heads)


def build_backbone(sd: dict[str, torch.Tensor], source: object = "weights",
                   num_heads: int | None = None) -> Backbone:
    """The Backbone of a clean state dict of any supported family, in eval mode.

    `num_heads` is only needed for widths outside the released sizes (it cannot be read from the weights).
    """
    return adapter_for(sd, source).build(sd, source, num_heads)


def training_backbone(sd: dict[str, torch.Tensor], source: object = "weights", drop_path_rate: float = 0.0
                      ) -> torch.nn.Module:
    """A trainable backbone initialised from a state dict of any family (`python -m train --init_weights`):
    DINO's own network for DINO weights (as `--arch` builds it), a Backbone for the later generations; its
    forward is the [CLS] token after the final norm, in train mode, with gradients."""
    adapter = adapter_for(sd, source)
    model = adapter.build(sd, source, drop_path_rate=drop_path_rate)
    if adapter.name == "dino":
        model = model.model  # our plain ViT or ResNet-50: training code and checkpoints as with --arch
    return model.train().requires_grad_(True)


# The later generations' presets live in weights.PRESETS (one registry); their files are fetched here.
FAMILY_PRESETS = {name: p for name, p in PRESETS.items() if p.family != "dino"}


def preset_path(name: str) -> Path:
    """Where preset `name`'s file lives in the torch hub cache (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FAMILY_PRESETS[name].filename


class PresetUnavailable(WeightsUnavailable):
    """A preset that is neither cached nor downloadable (for DINOv3: not in the cache; `url` is then the licence
    request page); `cache_path` says where to put the file."""


def preset_structure_mismatch(name: str, sd: dict[str, torch.Tensor], source: object) -> str | None:
    """Why the state dict is not preset `name`'s architecture (family and name from its keys); None if it is."""
    preset = FAMILY_PRESETS[name]
    try:
        spec = recognise(sd, source)
    except (FamilyError, ValueError) as err:
        return str(err)
    if (spec.family, spec.name) != (preset.family, name):
        return f"it holds {spec.name} ({spec.family}) weights"
    return None


def fetch_family_preset(name: str, progress: bool = True) -> Path:
    """Path of a DINOv2 / DINOv3 preset's file: DINOv2 downloads once (checked by structure before it takes
    its final name); DINOv3 only resolves to a file already in the hub cache, under its official name."""
    preset = FAMILY_PRESETS[name]
    path = preset_path(name)
    if path.is_file():
        return path
    if preset.gated:
        raise PresetUnavailable(
            f"preset {name!r}: DINOv3 weights are licence-gated and never downloaded here; request them at "
            f"{DINOV3_DOWNLOADS} and put {preset.filename} at {path}, or pass the file's path", DINOV3_DOWNLOADS, path)
    target = AtomicFile(path)
    try:
        torch.hub.download_url_to_file(preset.url, str(target.tmp), progress=progress)
        sd = _extract_backbone(_read_checkpoint(target.tmp), "teacher", preset.url)
        reason = preset_structure_mismatch(name, sd, preset.url)
        if reason:
            raise FamilyError(f"{preset.url}: the download is not preset {name} ({reason}); it was not cached")
        target.commit()
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = str(getattr(err, "reason", None) or err).splitlines()[0][:120] or type(err).__name__
        raise PresetUnavailable(f"cannot download preset {name!r} from {preset.url} ({reason}); download it "
                                f"elsewhere and put it at {path}, or pass the file's path", preset.url, path) from None
    finally:
        target.discard()
    return path
