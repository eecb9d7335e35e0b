"""One interface over every DINO generation's backbone: features, the last block's q/k/v and the [CLS] attention."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .models import DinoVisionTransformer

FAMILIES = ("dino", "dinov2", "dinov2_reg", "dinov3", "resnet")
GENERATIONS = {"dino": "DINO", "dinov2": "DINOv2", "dinov2_reg": "DINOv2", "dinov3": "DINOv3", "resnet": "DINO"}
DINOV3_LICENCE = ("DINOv3 weights are under the DINOv3 License "
                  "(https://ai.meta.com/resources/models-and-libraries/dinov3-license/)")


class PatchSizeError(UserError):
    """An input image smaller than one patch."""


@dataclass
class BackboneOutput:
    """The last layer's tokens after the final norm, split by kind."""

    cls: torch.Tensor  # (B, D)
    registers: torch.Tensor  # (B, R, D), R = 0 without registers
    patch_tokens: torch.Tensor  # (B, h*w, D)
    grid: tuple[int, int]  # (h, w)

    def patch_grid(self) -> torch.Tensor:
        """Patch tokens on their grid: (B, h, w, D)."""
        b, _, d = self.patch_tokens.shape
        return self.patch_tokens.reshape(b, *self.grid, d)


@dataclass
class LastBlockQKV:
    """The last block's queries, keys and values per head as its attention uses them."""

    q: torch.Tensor  # (B, heads, P + h*w, hd), RoPE applied to the patches' queries where the model uses RoPE
    k: torch.Tensor  # (B, heads, P + h*w, hd), likewise
    v: torch.Tensor  # (B, heads, P + h*w, hd)
    k_unrotated: torch.Tensor  # keys before RoPE (the same tensor as k without RoPE)
    q_unrotated: torch.Tensor  # queries before RoPE (likewise)
    scale: float  # head_dim ** -0.5
    num_prefix_tokens: int  # P: [CLS] plus registers
    grid: tuple[int, int]

    def patch_part(self, t: torch.Tensor) -> torch.Tensor:
        """Patch tokens of a per-head tensor with the heads concatenated: (B, h*w, heads*hd)."""
        b, heads, n, hd = t.shape
        return t.transpose(1, 2).reshape(b, n, heads * hd)[:, self.num_prefix_tokens:]


@dataclass
class ClsAttention:
    """The last block's [CLS] query row, softmax over every token (registers included)."""

    maps: torch.Tensor  # (B, heads, h, w): the patch part
    register_share: torch.Tensor  # (B, heads): the mass on the registers (0 without registers)
    cls_share: torch.Tensor  # (B, heads): the mass [CLS] puts on itself


def crop_to_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Drop the rows and columns past the last whole patch (as the reference's strided convolution does)."""
    height, width = x.shape[-2:]
    if height < patch_size or width < patch_size:
        raise PatchSizeError(f"image of {width}x{height} pixels is smaller than one {patch_size}-pixel patch")
    return x[..., : height - height % patch_size, : width - width % patch_size]


class Backbone(nn.Module):
    """A frozen DINO backbone of any generation behind one interface.

    `forward(img)` is the [CLS] token after the final norm (B, D), as every reference backbone's output,
    so k-NN and linear evaluation use any backbone unchanged.
    """

    family: str = ""
    is_vit: bool = True
    num_registers: int = 0

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.name = name or type(model).__name__

    # What a command needs to know about the architecture.
    @property
    def generation(self) -> str:
        return GENERATIONS[self.family]

    @property
    def licence(self) -> str | None:
        """The licence line to show where such weights are in use (None: nothing to add)."""
        return DINOV3_LICENCE if self.family == "dinov3" else None

    @property
    def arch(self) -> str:
        """DINO's architecture name (vit_small, ...) for DINO weights; the hub name for later generations."""
        return getattr(self.model, "arch", self.name)

    @property
    def blocks(self) -> nn.ModuleList:
        return self._blocks()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_registers

    @property
    def patch_size(self) -> int:
        return int(self._patch_size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def num_heads(self) -> int:
        return int(self._blocks()[-1].attn.num_heads)

    @property
    def depth(self) -> int:
        return len(self._blocks())

    # The pieces each family defines.
    def _blocks(self) -> nn.ModuleList:
        return self.model.blocks

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], object]:
        """Tokens (B, P + h*w, D) before the first block, the grid, and what the blocks need besides (RoPE)."""
        raise NotImplementedError

    def _run_block(self, block: nn.Module, tokens: torch.Tensor, context: object) -> torch.Tensor:
        return block(tokens)

    def _norm(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.norm(tokens)

    def _qkv(self, block: nn.Module, tokens: torch.Tensor, context: object
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v, q and k before RoPE) of `block` on its input tokens, each (B, heads, T, hd)."""
        raise NotImplementedError

    # The interface.
    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """All last-layer tokens after the final norm: (B, P + h*w, D), and the grid."""
        tokens, grid, context = self._prepare(x)
        for block in self._blocks():
            tokens = self._run_block(block, tokens, context)
        return self._norm(tokens), grid

    def split(self, tokens: torch.Tensor, grid: tuple[int, int]) -> BackboneOutput:
        p = self.num_prefix_tokens
        return BackboneOutput(tokens[:, 0], tokens[:, 1:p], tokens[:, p:], grid)

    def forward_features(self, x: torch.Tensor) -> BackboneOutput:
        """Images (B, 3, H, W) → [CLS], registers and patch tokens after the final norm."""
        return self.split(*self.tokens(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The [CLS] token after the final norm: (B, D)."""
        return self.tokens(x)[0][:, 0]

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last layer's normed patch tokens on their grid: (B, h, w, D)."""
        return self.forward_features(x).patch_grid()

    def intermediate_layers(self, x: torch.Tensor, n: int) -> list[torch.Tensor]:
        """The tokens (B, P + h*w, D) after each of the last `n` blocks, each through the final norm."""
        if not 1 <= n <= self.depth:
            raise UserError(f"--n_last_blocks: expected 1 to {self.depth}, got {n}")
        tokens, _, context = self._prepare(x)
        first = self.depth - n
        outputs = []
        for i, block in enumerate(self._blocks()):
            tokens = self._run_block(block, tokens, context)
            if i >= first:
                outputs.append(self._norm(tokens))
        return outputs

    def last_qkv(self, x: torch.Tensor) -> LastBlockQKV:
        """The last block's q/k/v as its attention uses them (RoPE applied), and the keys before RoPE."""
        # Every block but the last runs as usual; the last one's projections are recomputed, because fused
        # attention never materialises the probabilities.
        tokens, grid, context = self._prepare(x)
        blocks = self._blocks()
        for block in blocks[:-1]:
            tokens = self._run_block(block, tokens, context)
        q, k, v, q_raw, k_raw = self._qkv(blocks[-1], tokens, context)
        return LastBlockQKV(q, k, v, k_raw, q_raw, float(blocks[-1].attn.scale), self.num_prefix_tokens, grid)

    def last_attention_cls(self, x: torch.Tensor) -> ClsAttention:
        """[CLS] attention of the last block per head: its patch part on the grid and the registers' share."""
        qkv = self.last_qkv(x)
        row = cls_attention_row(qkv.q, qkv.k, qkv.scale)  # (B, heads, P + h*w)
        p = qkv.num_prefix_tokens
        maps = row[..., p:].reshape(*row.shape[:2], *qkv.grid)  # (B, heads, h, w)
        return ClsAttention(maps, row[..., 1:p].sum(dim=-1), row[..., 0])


def cls_attention_row(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The [CLS] query's attention over all tokens, from per-head q, k (B, heads, T, hd): (B, heads, T)."""
    return ((q[:, :, :1] @ k.transpose(-2, -1)) * scale).softmax(dim=-1)[:, :, 0]


class DinoV1Backbone(Backbone):
    """DINO (2021) ViT: delegates to the code every command used before, so results stay bit-for-bit."""

    family = "dino"

    @property
    def _patch_size(self) -> int:
        return self.model.patch_size

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], object]:
        p = self.patch_size
        crop_to_patches(x, p)  # only the check: prepare_tokens crops itself
        return self.model.prepare_tokens(x), (x.shape[-2] // p, x.shape[-1] // p), None

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch_size
        crop_to_patches(x, p)
        return self.model.forward_features(x), (x.shape[-2] // p, x.shape[-1] // p)

    def _qkv(self, block, tokens, context):
        attn = block.attn
        y = block.norm1(tokens)
        b, n, _ = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, N, hd)
        return q, k, qkv[2], q, k


class DinoV2Backbone(Backbone):
    """DINOv2 ViT on timm's VisionTransformer, with the official hub models' positional interpolation.

    Without registers: bicubic with a scale factor (n + 0.1) / sqrt(N), no antialias; with registers:
    offset 0 (an output size) and antialias. timm's own resampling differs for the former.
    """

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__(model, name)
        self.num_registers = int(model.reg_token.shape[1]) if getattr(model, "reg_token", None) is not None else 0
        self.family = "dinov2_reg" if self.num_registers else "dinov2"
        self.interpolate_offset = 0.0 if self.num_registers else 0.1
        self.interpolate_antialias = bool(self.num_registers)

    @property
    def _patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embeddings of the patches for an h x w grid: (1, h*w, D)."""
        pos = self.model.pos_embed  # (1, [1 +] M*M, D): the [CLS] entry only without registers
        patch_pos = pos[:, 0 if self.model.no_embed_class else 1:]
        m = int(math.sqrt(patch_pos.shape[1]))
        if h * w == m * m and h == w:
            return patch_pos
        dim = patch_pos.shape[-1]
        grid = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)  # (1, D, M, M)
        if self.interpolate_offset:
            scale = ((h + self.interpolate_offset) / m, (w + self.interpolate_offset) / m)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=self.interpolate_antialias)
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interpolate_antialias)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)  # (1, h*w, D)

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], object]:
        model = self.model
        x = model.patch_embed(crop_to_patches(x, self.patch_size))  # (B, h, w, D)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d) + self._pos_embed(h, w)
        cls = model.cls_token
        if not model.no_embed_class:
            cls = cls + model.pos_embed[:, :1]
        # Order [CLS], registers, patches; timm's conversion already added [CLS]'s position to the token.
        prefix = [cls.expand(b, -1, -1)]
        if self.num_registers:
            prefix.append(model.reg_token.expand(b, -1, -1))
        return torch.cat(prefix + [x], dim=1), (h, w), None

    def _qkv(self, block, tokens, context):
        return DinoV1Backbone._qkv(self, block, tokens, context)


class DinoV3Backbone(Backbone):
    """DINOv3 ViT on timm's Eva: RoPE on the patches' q and k, 4 storage tokens (registers), no pos_embed."""

    family = "dinov3"

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__(model, name)
        self.num_registers = int(model.reg_token.shape[1]) if getattr(model, "reg_token", None) is not None else 0

    @property
    def _patch_size(self) -> int:
        return self.model.patch_embed.patch_size[0]

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], object]:
        model = self.model
        x = model.patch_embed(crop_to_patches(x, self.patch_size))  # (B, h, w, D)
        b, h, w, d = x.shape
        rope = model.rope.get_embed(shape=(h, w))  # (h*w, 2 * hd): sin and cos
        prefix = [model.cls_token.expand(b, -1, -1)]
        if self.num_registers:
            prefix.append(model.reg_token.expand(b, -1, -1))
        return model.norm_pre(torch.cat(prefix + [x.reshape(b, h * w, d)], dim=1)), (h, w), rope

    def _run_block(self, block: nn.Module, tokens: torch.Tensor, context: object) -> torch.Tensor:
        return block(tokens, rope=context)

    def _qkv(self, block, tokens, context):
        from timm.layers import apply_rot_embed_cat

        attn = block.attn
        y = block.norm1(tokens)
        b, n, _ = y.shape
        # As EvaAttention.forward: the k bias is a fixed zero buffer (DINOv3 masks it out).
        bias = None if attn.q_bias is None else torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(y, attn.qkv.weight, bias).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, T, hd)
        q, k = attn.q_norm(q), attn.k_norm(k)
        p = attn.num_prefix_tokens
        half = getattr(attn, "rotate_half", False)
        q_rot = torch.cat([q[:, :, :p], apply_rot_embed_cat(q[:, :, p:], context, half=half)], dim=2).type_as(v)
        k_rot = torch.cat([k[:, :, :p], apply_rot_embed_cat(k[:, :, p:], context, half=half)], dim=2).type_as(v)
        return q_rot, k_rot, v, q, k


class ResNetBackbone(Backbone):
    """DINO ResNet-50: a pooled 2048-d output, no tokens and no attention."""

    family = "resnet"
    is_vit = False

    @property
    def _patch_size(self) -> int:
        return 32  # the total stride of its last feature map

    @property
    def embed_dim(self) -> int:
        return 2048

    @property
    def depth(self) -> int:
        return 0

    @property
    def num_heads(self) -> int:
        raise UserError("ResNet-50 has no attention heads")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _prepare(self, x):
        raise UserError("ResNet-50 has no tokens or attention: this needs a ViT backbone")

    def intermediate_layers(self, x, n):
        raise UserError("ResNet-50 has no transformer blocks: this needs a ViT backbone")


def as_backbone(model: nn.Module, name: str = "") -> Backbone:
    """The Backbone view of a model: ours (DINO v1 ViT, ResNet-50) or a timm DINOv2 / DINOv3 ViT."""
    if isinstance(model, Backbone):
        return model
    if isinstance(model, DinoVisionTransformer):
        return DinoV1Backbone(model, name or getattr(model, "arch", ""))
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, Eva):
        return DinoV3Backbone(model, name)
    if isinstance(model, VisionTransformer):
        return DinoV2Backbone(model, name)
    from torchvision.models import ResNet

    if isinstance(model, ResNet):
        return ResNetBackbone(model, name or "resnet50")
    raise TypeError(f"no backbone interface for {type(model).__name__}")
