"""DINO backbones: ViT tiny/small/base (patch 8 or 16) on timm, and ResNet-50 from torchvision."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from . import names
from .errors import UserError

ARCHS = names.ARCHS
VIT_WIDTHS = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}  # embed_dim, heads
PATCH_SIZES = (8, 16)


class DinoVisionTransformer(VisionTransformer):
    """timm's ViT with the reference DINO behaviour: state-dict keys of the official checkpoints,
    [CLS] output after the final norm, and the reference's positional-embedding interpolation."""

    def __init__(self, embed_dim: int, num_heads: int, patch_size: int = 16, img_size: int = 224,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=12,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,  # patch_embed returns (B, h, w, D) and accepts any size
        )
        self.patch_size = patch_size
        self.num_heads = num_heads

    def interpolate_pos_encoding(self, h: int, w: int, square_input: bool) -> torch.Tensor:
        """Positional embeddings for an h x w patch grid, as the reference `interpolate_pos_encoding`."""
        pos_embed = self.pos_embed  # (1, 1 + N, D)
        n = pos_embed.shape[1] - 1
        if h * w == n and square_input:
            return pos_embed
        side = int(math.sqrt(n))
        dim = pos_embed.shape[-1]
        grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, s, s)
        # The reference adds 0.1 to the target grid size and passes a scale factor (not a size):
        # it avoids floor(s * (h / s)) landing on h - 1, and it changes the sampling positions,
        # so features match the official ones only if both are reproduced.
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic")
        if grid.shape[-2:] != (h, w):
            raise RuntimeError(f"positional-embedding interpolation gave {tuple(grid.shape[-2:])}, expected {(h, w)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, dim)  # (1, h*w, D)
        return torch.cat((pos_embed[:, :1], grid), dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-embed images (B, 3, H, W), prepend [CLS], add positional embeddings: (B, 1 + h*w, D)."""
        height, width = x.shape[-2:]
        p = self.patch_size
        # The reference's strided convolution drops the pixels past the last whole patch.
        x = self.patch_embed(x[..., : height - height % p, : width - width % p])  # (B, h, w, D)
        b, h, w, d = x.shape
        x = torch.cat((self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)), dim=1)  # (B, 1+h*w, D)
        return self.pos_drop(x + self.interpolate_pos_encoding(h, w, square_input=height == width))

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        """All tokens after the final norm: (B, 1 + h*w, D)."""
        x = self.prepare_tokens(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The [CLS] token after the final norm, (B, D): the reference backbone's output."""
        return self.forward_features(x)[:, 0]


def build_backbone(arch: str = "vit_small", patch_size: int = 16, drop_path_rate: float = 0.0,
                   img_size: int = 224) -> nn.Module:
    """Build a randomly initialised DINO backbone by name.

    `img_size` only sets the stored positional-embedding grid (img_size / patch_size per side,
    224 in every official checkpoint); any input size works at run time.
    """
    if arch in VIT_WIDTHS:
        if patch_size not in PATCH_SIZES:
            raise UserError(f"--patch_size: expected one of {PATCH_SIZES} for {arch}, got {patch_size}")
        embed_dim, heads = VIT_WIDTHS[arch]
        model = DinoVisionTransformer(embed_dim, heads, patch_size=patch_size, img_size=img_size,
                                      drop_path_rate=drop_path_rate)
        model.arch = arch
        return model
    if arch == "resnet50":
        from torchvision.models import resnet50

        model = resnet50(weights=None)
        model.fc = nn.Identity()  # the reference drops the classifier: the backbone outputs (B, 2048)
        model.embed_dim = 2048
        model.arch = arch
        return model
    raise UserError(f"--arch: unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")


def model_name(model: nn.Module) -> str:
    """"vit_small/16"-style name of a backbone built by `build_backbone`; a Backbone's own name."""
    if hasattr(model, "family"):  # a dino_seg.backbones.Backbone
        return model.name
    return f"{model.arch}/{model.patch_size}" if is_vit(model) else model.arch


def is_vit(model: nn.Module) -> bool:
    """Whether the backbone is a ViT of any DINO generation (has patch tokens and attention)."""
    return isinstance(model, DinoVisionTransformer) or getattr(model, "is_vit", False) is True


def patch_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last layer's normalised patch tokens without [CLS]: (B, h, w, D)."""
    if not is_vit(model):
        raise UserError("patch features need a ViT backbone; ResNet-50 has no patch tokens")
    if not isinstance(model, DinoVisionTransformer):  # a Backbone of a later generation: registers dropped
        return model.patch_features(images)
    p = model.patch_size
    h, w = images.shape[-2] // p, images.shape[-1] // p
    tokens = model.forward_features(images)[:, 1:]  # (B, h*w, D)
    return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])
