"""Last-layer [CLS] self-attention of DINO ViTs, masks that keep a share of its mass, and their Jaccard."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from torch import nn

from .backbones import Backbone, as_backbone
from .errors import UserError
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageError, check_sizes, to_rgb


def preprocess(image: Image.Image, image_size: int | tuple[int, ...] = (480, 480), patch_size: int = 16) -> torch.Tensor:
    """Resize and normalise as visualize_attention.py does, then crop to whole patches: (1, 3, H, W).

    A single size resizes the short side and keeps the aspect ratio; two sizes give (height, width).
    Any image mode is read as 8-bit RGB first (grayscale, RGBA and 16-bit images too, as `load_image`).
    """
    image = to_rgb(image)
    size = check_sizes(image_size, "--image_size", patch_size)
    tensor = transforms.Compose([
        transforms.Resize(size if len(size) == 2 else size[0]),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])(image)
    h, w = tensor.shape[1] - tensor.shape[1] % patch_size, tensor.shape[2] - tensor.shape[2] % patch_size
    if h == 0 or w == 0:
        raise ImageError(f"image of {image.width}x{image.height} is smaller than one {patch_size}-pixel patch after resizing")
    return tensor[:, :h, :w].unsqueeze(0)


def resized_size(size_wh: tuple[int, int], image_size: int | tuple[int, ...]) -> tuple[int, int]:
    """(H, W) that torchvision's Resize gives an image of PIL size (W, H) for --image_size."""
    w, h = size_wh
    image_size = [image_size] if isinstance(image_size, int) else list(image_size)
    if len(image_size) == 2:
        return int(image_size[0]), int(image_size[1])
    short = int(image_size[0])
    # torchvision: the short side becomes `short`, the long side int(short * long / short_side).
    if w <= h:
        return int(short * h / w), short
    return short, int(short * w / h)


def _backbone(model: nn.Module) -> Backbone:
    backbone = as_backbone(model)
    if not backbone.is_vit:
        raise UserError("self-attention maps need a ViT backbone; ResNet-50 has no attention")
    return backbone


def last_block_qkv(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of the last block as its attention uses them (DINOv3: RoPE applied), per head:
    three (B, heads, P + h*w, head_dim), P = [CLS] plus registers."""
    # Every block but the last runs; the last block's projections are recomputed (backbones.Backbone.last_qkv):
    # timm's fused attention never materialises the probabilities the reference's get_last_selfattention returns.
    qkv = _backbone(model).last_qkv(x)
    return qkv.q, qkv.k, qkv.v


def cls_row_attention(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """[CLS] -> patch attention from per-head queries and keys (B, heads, 1+N, hd) of a model without
    registers: (B, heads, N)."""
    row = ((q[:, :, :1] @ k.transpose(-2, -1)) * scale).softmax(dim=-1)  # (B, heads, 1, 1+N)
    return row[:, :, 0, 1:]


@torch.no_grad()
def last_selfattention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of the last block: (B, heads, P + h*w, P + h*w)."""
    qkv = _backbone(model).last_qkv(x)
    return ((qkv.q @ qkv.k.transpose(-2, -1)) * qkv.scale).softmax(dim=-1)


@torch.no_grad()
def cls_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[CLS] -> patch attention of the last block, per head: (B, heads, h, w).

    Only the [CLS] query row is computed: the full (N x N) map is never needed for it. The softmax runs over
    every token, registers included; the maps are its patch part (backbones.Backbone.last_attention_cls).
    """
    return _backbone(model).last_attention_cls(x).maps


def threshold_masks(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep, per map, the highest-attention patches that hold `threshold` of its mass (bool, same shape).

    The reference rule: sort ascending, normalise to sum 1, cumulative sum, keep where it exceeds
    1 - threshold, undo the sort. Leading dims are maps (heads); the last two are the patch grid.
    """
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold: expected a share of the attention mass in [0, 1], got {threshold}")
    shape = attn.shape
    flat = attn.reshape(-1, shape[-2] * shape[-1]).double()  # (maps, N)
    values, order = torch.sort(flat, dim=1, stable=True)
    values = values / values.sum(dim=1, keepdim=True)
    keep_sorted = torch.cumsum(values, dim=1) > (1 - threshold)
    keep = torch.empty_like(keep_sorted)
    keep.scatter_(1, order, keep_sorted)
    return keep.reshape(shape)


def upsample_masks(masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling of (maps, h, w) masks or maps to pixels: (maps, h*p, w*p)."""
    return F.interpolate(masks[None].float(), scale_factor=patch_size, mode="nearest")[0]


@dataclass
class AttentionResult:
    """The attention of one image: maps at patch resolution and the image they were computed on."""

    maps: np.ndarray  # (heads, h, w) float32 probabilities
    image: np.ndarray  # (H, W, 3) uint8, the resized and cropped image (H = h * patch)
    patch_size: int
    register_share: np.ndarray | None = None  # (heads,) [CLS] attention mass on the registers; None without

    @property
    def mean_map(self) -> np.ndarray:
        return self.maps.mean(axis=0)

    def masks(self, threshold: float, include_mean: bool = False) -> np.ndarray:
        """Masks at pixel resolution: (heads, H, W) bool, plus the mean map's mask last if asked."""
        maps = torch.from_numpy(self.maps)
        if include_mean:
            maps = torch.cat([maps, maps.mean(dim=0, keepdim=True)])
        return upsample_masks(threshold_masks(maps, threshold), self.patch_size).bool().numpy()

    def pixel_maps(self) -> np.ndarray:
        """Attention maps upsampled to pixels by nearest neighbour, as the reference saves them: (heads, H, W)."""
        return upsample_masks(torch.from_numpy(self.maps), self.patch_size).numpy()


def compute_attention(
    model: nn.Module,
    image: Image.Image,
    image_size: int | tuple[int, ...] = (480, 480),
) -> AttentionResult:
    """Preprocess one image (any mode, read as RGB) and return its per-head [CLS] attention (and the registers' share, if any)."""
    backbone = _backbone(model)
    return attention_results(model, preprocess(image, image_size, backbone.patch_size))[0]


def attention_results(model: nn.Module, x: torch.Tensor) -> list[AttentionResult]:
    """The attention of each image of a preprocessed batch x (B, 3, H, W) (see `preprocess`): one forward pass.
    Runs on the model's device, under whatever autocast the caller set (maps come back as float32)."""
    backbone = _backbone(model)
    device = next(backbone.parameters()).device
    with torch.no_grad():
        attention = backbone.last_attention_cls(x.to(device))
    maps = attention.maps.float().cpu().numpy()  # (B, heads, h, w)
    shares = attention.register_share.float().cpu().numpy() if backbone.num_registers else None  # (B, heads)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    shown = ((x.cpu().float() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [AttentionResult(maps=maps[i], image=shown[i], patch_size=backbone.patch_size,
                            register_share=None if shares is None else shares[i]) for i in range(len(x))]


def preprocessed_size(size_wh: tuple[int, int], image_size: int | tuple[int, ...], patch_size: int) -> tuple[int, int]:
    """(H, W) of `preprocess`'s output for an image of PIL size (W, H): resized, then cropped to whole patches.
    Images with equal values can share a batch."""
    h, w = resized_size(size_wh, image_size)
    return h - h % patch_size, w - w % patch_size


def masks_to_image_size(masks: np.ndarray, resized_hw: tuple[int, int], original_hw: tuple[int, int]) -> np.ndarray:
    """Map masks of the cropped, resized image (maps, Hc, Wc) back onto the original image (maps, H0, W0).

    The crop dropped the last rows and columns of the resized image: they are padded as background.
    """
    maps, hc, wc = masks.shape
    full = np.zeros((maps, *resized_hw), dtype=np.uint8)
    full[:, :hc, :wc] = masks
    t = torch.from_numpy(full)[None].float()
    return F.interpolate(t, size=original_hw, mode="nearest")[0].bool().numpy()
