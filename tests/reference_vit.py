"""A plain functional restatement of the reference DINO ViT forward pass, to check ours against.

Written from the reference's definitions (vision_transformer.py of facebookresearch/dino):
conv patch embedding, [CLS] prepended, positional embedding interpolated bicubically with a
scale factor of (n + 0.1) / sqrt(N) when the grid or the aspect differs, pre-norm blocks with
an explicit softmax attention, final LayerNorm (eps 1e-6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reference_pos_embed(pos_embed: torch.Tensor, h_pixels: int, w_pixels: int, patch: int) -> torch.Tensor:
    n = pos_embed.shape[1] - 1
    h, w = h_pixels // patch, w_pixels // patch
    if h * w == n and h_pixels == w_pixels:
        return pos_embed
    s = math.sqrt(n)
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, int(s), int(s), dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((h + 0.1) / s, (w + 0.1) / s), mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1], grid), dim=1)


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int = 12,
                      return_last_attention: bool = False) -> torch.Tensor:
    """All normalised tokens (B, 1+N, D), or the last block's attention (B, heads, 1+N, 1+N)."""
    patch = sd["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    b, _, dim = tokens.shape
    tokens = torch.cat((sd["cls_token"].expand(b, -1, -1), tokens), dim=1)
    tokens = tokens + reference_pos_embed(sd["pos_embed"], x.shape[-2], x.shape[-1], patch)
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(tokens, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        n = y.shape[1]
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        qkv = qkv.reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
        if return_last_attention and i == depth - 1:
            return attn
        y = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        tokens = tokens + F.linear(y, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(tokens, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        tokens = tokens + y
    return F.layer_norm(tokens, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
