"""Plain functional restatements of the official DINOv2 and DINOv3 ViT forward passes, and tiny random
state dicts in their released key format, to check our backbones against.

Written from facebookresearch/dinov2 (models/vision_transformer.py, layers/) and facebookresearch/dinov3
(models/vision_transformer.py, layers/attention.py, layers/rope_position_encoding.py, hub/backbones.py):
- DINOv2: conv patch embedding (input a multiple of the patch), [CLS] prepended, positional embedding
  added ([CLS] entry included), interpolated bicubically either with scale factors (h + offset) / M
  (offset 0.1, no antialias: models without registers) or to the size (offset 0, antialias: with
  registers), then the registers inserted after [CLS]; pre-norm blocks with layer scale, LayerNorm eps 1e-6.
- DINOv3: [CLS] and 4 storage tokens prepended, no positional embedding; RoPE on the patches' q and k
  in every block (coords 0.5-centred, divided by H and W separately, mapped to [-1, 1];
  angles 2*pi*coord/period, tiled; x*cos + rotate_half(x)*sin); the qkv bias multiplied by
  bias_mask (k part zero); LayerNorm eps 1e-5; layer scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _block_weights(sd: dict, i: int, dim: int, hidden: int, g: torch.Generator, swiglu: bool = False,
                   v3: bool = False) -> None:
    p = f"blocks.{i}."
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    sd[p + "norm1.weight"] = 1 + r(dim, s=0.1)
    sd[p + "norm1.bias"] = r(dim, s=0.1)
    sd[p + "attn.qkv.weight"] = r(3 * dim, dim)
    sd[p + "attn.qkv.bias"] = r(3 * dim, s=0.1)
    if v3:
        mask = torch.ones(3 * dim)
        mask[dim: 2 * dim] = 0
        sd[p + "attn.qkv.bias_mask"] = mask
    sd[p + "attn.proj.weight"] = r(dim, dim)
    sd[p + "attn.proj.bias"] = r(dim, s=0.1)
    sd[p + "ls1.gamma"] = 0.5 + r(dim, s=0.1)
    sd[p + "norm2.weight"] = 1 + r(dim, s=0.1)
    sd[p + "norm2.bias"] = r(dim, s=0.1)
    if swiglu:
        sd[p + "mlp.w12.weight"] = r(2 * hidden, dim)
        sd[p + "mlp.w12.bias"] = r(2 * hidden, s=0.1)
        sd[p + "mlp.w3.weight"] = r(dim, hidden)
        sd[p + "mlp.w3.bias"] = r(dim, s=0.1)
    else:
        sd[p + "mlp.fc1.weight"] = r(hidden, dim)
        sd[p + "mlp.fc1.bias"] = r(hidden, s=0.1)
        sd[p + "mlp.fc2.weight"] = r(dim, hidden)
        sd[p + "mlp.fc2.bias"] = r(dim, s=0.1)
    sd[p + "ls2.gamma"] = 0.5 + r(dim, s=0.1)


def dinov2_state_dict(dim: int = 48, depth: int = 2, patch: int = 14, grid: int = 5, registers: int = 0,
                      swiglu: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the released DINOv2 key format (`dinov2_vits14[_reg4]_pretrain.pth`)."""
    g = _gen(seed)
    sd = {
        "cls_token": torch.randn(1, 1, dim, generator=g),
        "pos_embed": torch.randn(1, 1 + grid * grid, dim, generator=g),
        "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=g) * 0.05,
        "patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.1,
        "norm.weight": 1 + torch.randn(dim, generator=g) * 0.1,
        "norm.bias": torch.randn(dim, generator=g) * 0.1,
    }
    if registers:
        sd["register_tokens"] = torch.randn(1, registers, dim, generator=g)
    for i in range(depth):
        _block_weights(sd, i, dim, 4 * dim if not swiglu else 64, g, swiglu=swiglu)
    return sd


def dinov2_pos_embed(pos_embed: torch.Tensor, h: int, w: int, offset: float, antialias: bool) -> torch.Tensor:
    n = pos_embed.shape[1] - 1
    if h * w == n and h == w:
        return pos_embed
    m = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        patch_pos = F.interpolate(patch_pos, scale_factor=((h + offset) / m, (w + offset) / m), mode="bicubic",
                                  antialias=antialias)
    else:
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=antialias)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1], patch_pos), dim=1)


def _mlp(sd: dict, p: str, y: torch.Tensor) -> torch.Tensor:
    if p + "mlp.w12.weight" in sd:  # SwiGLUFFNFused: silu(x1) * x2
        x1, x2 = F.linear(y, sd[p + "mlp.w12.weight"], sd[p + "mlp.w12.bias"]).chunk(2, dim=-1)
        return F.linear(F.silu(x1) * x2, sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
    return F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                    sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def dinov2_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int,
                   last_attention: bool = False, n_last: int = 1) -> torch.Tensor | list[torch.Tensor]:
    """All normed tokens (B, 1 + R + N, D) in order [CLS], registers, patches; or the last block's
    attention probabilities (B, heads, T, T); or, with n_last > 1, the normed tokens after each of the
    last n_last blocks."""
    registers = "register_tokens" in sd
    offset, antialias = (0.0, True) if registers else (0.1, False)
    patch = sd["patch_embed.proj.weight"].shape[-1]
    assert x.shape[-2] % patch == 0 and x.shape[-1] % patch == 0
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    h, w = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    b, _, dim = t.shape
    t = torch.cat((sd["cls_token"].expand(b, -1, -1), t), dim=1)
    t = t + dinov2_pos_embed(sd["pos_embed"], h, w, offset, antialias)
    if registers:
        t = torch.cat((t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]), dim=1)
    outs = []
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        n = y.shape[1]
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        qkv = qkv.reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        if last_attention and i == depth - 1:
            return attn
        y = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        t = t + sd[p + "ls1.gamma"] * F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(t, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        t = t + sd[p + "ls2.gamma"] * _mlp(sd, p, y)
        outs.append(F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6))
    return outs[-n_last:] if n_last > 1 else outs[-1]


def dinov3_state_dict(dim: int = 48, depth: int = 2, heads: int = 3, patch: int = 16, registers: int = 4,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the released DINOv3 key format (`dinov3_vits16_pretrain_lvd1689m-*.pth`); the RoPE
    periods are stored rounded to bfloat16, as in the released files."""
    g = _gen(seed)
    head_dim = dim // heads
    periods = 100.0 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))
    sd = {
        "cls_token": torch.randn(1, 1, dim, generator=g),
        "storage_tokens": torch.randn(1, registers, dim, generator=g),
        "mask_token": torch.zeros(1, dim),
        "rope_embed.periods": periods.to(torch.bfloat16),
        "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=g) * 0.05,
        "patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.1,
        "norm.weight": 1 + torch.randn(dim, generator=g) * 0.1,
        "norm.bias": torch.randn(dim, generator=g) * 0.1,
    }
    for i in range(depth):
        _block_weights(sd, i, dim, 4 * dim, g, v3=True)
    return sd


def dinov3_rope(periods: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each (h*w, head_dim), of RopePositionEmbedding with normalize_coords 'separate'."""
    coords_h = torch.arange(0.5, h, dtype=torch.float32) / h
    coords_w = torch.arange(0.5, w, dtype=torch.float32) / w
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # (hw, 2)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods.float()[None, None, :]  # (hw, 2, hd/4)
    angles = angles.flatten(1, 2).tile(2)  # (hw, hd)
    return torch.sin(angles), torch.cos(angles)


def _rope_apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def dinov3_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int,
                   last: str = "tokens") -> torch.Tensor | tuple[torch.Tensor, ...]:
    """last="tokens": normed tokens (B, 1 + R + N, D); "attention": the last block's attention probabilities
    (B, heads, T, T) with RoPE; "qk": the last block's (q, k roped, k before RoPE)."""
    patch = sd["patch_embed.proj.weight"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    h, w = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    b, _, dim = t.shape
    t = torch.cat((sd["cls_token"].expand(b, -1, -1), sd["storage_tokens"].expand(b, -1, -1), t), dim=1)
    sin, cos = dinov3_rope(sd["rope_embed.periods"], h, w)
    prefix = t.shape[1] - h * w
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-5)
        n = y.shape[1]
        bias = sd[p + "attn.qkv.bias"] * sd[p + "attn.qkv.bias_mask"]
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], bias).reshape(b, n, 3, heads, dim // heads)
        q, k, v = [z.transpose(1, 2) for z in torch.unbind(qkv, 2)]  # (B, heads, T, hd)
        k_raw = k
        q = torch.cat((q[:, :, :prefix], _rope_apply(q[:, :, prefix:], sin, cos)), dim=2)
        k = torch.cat((k[:, :, :prefix], _rope_apply(k[:, :, prefix:], sin, cos)), dim=2)
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        if i == depth - 1 and last == "attention":
            return attn
        if i == depth - 1 and last == "qk":
            return q, k, k_raw
        y = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        t = t + sd[p + "ls1.gamma"] * F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(t, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-5)
        t = t + sd[p + "ls2.gamma"] * _mlp(sd, p, y)
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-5)
