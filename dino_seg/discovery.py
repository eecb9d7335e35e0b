"""Unsupervised object discovery on a frozen DINO backbone: the attention threshold, LOST, TokenCut and MaskCut.

One forward pass (`extract_features`) gives the last block's keys, queries and values (heads
concatenated, [CLS] dropped), the [CLS] attention and the patch grid; `discover` turns them into
objects with any method, so switching methods or thresholds never runs the backbone again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from .attention import resized_size, threshold_masks
from .backbones import as_backbone, cls_attention_row
from . import names
from .errors import UserError
from .images import IMAGENET_MEAN, IMAGENET_STD, ImageError, check_sizes, to_rgb
from .masks import mask_extent, mask_iou
from .models import is_vit
from .ncut import NormalisedCut, second_eigenvector
from .objectness import AUTO_MAX_OBJECTS, auto_count, object_ncuts, score_from_ncut
from .preprocess import check_preprocess, resize_to_patches

METHODS = names.DISCOVERY_METHODS
FEATURES = ("k", "q", "v")
DEFAULT_TAU = {"tokencut": 0.2, "maskcut": 0.15}
# ~1600 x 1600 pixels at patch 16, 800 x 800 at patch 8: the graph then fits in a few hundred MB and the
# backbone's attention stays tractable; larger inputs are downscaled to fit, with a note.
MAX_PATCHES = 10_000
RESNET_PAD = 16  # LOST pads ResNet inputs to its --patch_size default
CORNER_FLIP = 3  # CutLER's maskcut.py: a partition holding 3 or 4 of the grid's corners is the background
MIN_CUT_PATCHES = 3  # a normalised cut splits the patches in two; its eigenvector needs at least 3


@dataclass
class DiscoveryFeatures:
    """What one forward pass yields for discovery (CPU tensors)."""

    feats: dict[str, torch.Tensor]  # "k" / "q" / "v" (ViT) or "resnet": (N, D), [CLS] dropped
    cls_attention: np.ndarray | None  # (heads, h, w) [CLS] -> patch attention (ViT only)
    grid: tuple[int, int]  # (h, w) patches
    scale: tuple[float, float]  # pixels per patch (y, x) in the processed image
    input_hw: tuple[int, int]  # processed (resized) image size before padding
    original_hw: tuple[int, int]  # the image as given
    note: str = ""  # set when the image was downscaled to respect the patch cap
    prefix_attention: np.ndarray | None = None  # (heads, P) the [CLS] row's mass on [CLS] itself, then each register

    @property
    def is_vit(self) -> bool:
        return self.cls_attention is not None

    def features(self, which: str = "k") -> torch.Tensor:
        if not self.is_vit:
            return self.feats["resnet"]
        if which not in FEATURES:
            raise UserError(f"--which_features: expected one of k, q, v, got {which!r}")
        return self.feats[which]


@dataclass
class DiscoveryResult:
    """Objects found in one image, in discovery order."""

    method: str
    patches: np.ndarray  # (objects, h, w) bool
    masks: np.ndarray  # (objects, H, W) bool at the original image size
    boxes: list[list[float]]  # [x0, y0, x1, y1] per object, original-image pixels, clipped
    scores: np.ndarray  # (h, w) float32 per-patch score map
    seeds: list[int] = field(default_factory=list)  # flat patch index of each object's seed
    note: str = ""
    object_scores: list[float] | None = None  # per object, 1 - Ncut on TokenCut's graph (objectness.py), if asked
    stop_score: float | None = None  # --n_objects auto: the score of the first cut refused as no object

    @property
    def seed(self) -> int | None:
        return self.seeds[0] if self.seeds else None


def preprocess(image: Image.Image, patch_size: int, resize: int | tuple[int, ...] | None = None,
               max_patches: int = MAX_PATCHES, mode: str = "pad") -> tuple[torch.Tensor, tuple[int, int], str]:
    """ToTensor, ImageNet normalisation, optional resize, zero padding to whole patches (as LOST and TokenCut);
    mode "resize": instead a LANCZOS resize of each side to the nearest patch multiple (get_saliency.py).

    Any image mode is read as 8-bit RGB first (grayscale, RGBA and 16-bit images too, as `load_image`).
    Returns the padded batch (1, 3, Hp, Wp), the unpadded processed size and a note when capped.
    """
    image = to_rgb(image)
    if resize is not None:
        resize = check_sizes(resize, "--resize", patch_size)
    h, w = (image.height, image.width) if resize is None else resized_size(image.size, resize)
    note = ""
    n = math.ceil(h / patch_size) * math.ceil(w / patch_size)
    if n > max_patches:
        factor = math.sqrt(max_patches / n)
        while True:
            nh, nw = max(1, int(h * factor)), max(1, int(w * factor))
            if math.ceil(nh / patch_size) * math.ceil(nw / patch_size) <= max_patches:
                break
            factor *= 0.99
        note = (f"{image.width}x{image.height} image has {n} patches, over the cap of {max_patches}: "
                f"processed at {nw}x{nh}")
        h, w = nh, nw
    if check_preprocess(mode) == "resize":
        image = resize_to_patches(image, patch_size, (w, h))  # one LANCZOS resize from the original
        w, h = image.size
    if min(h, w) < patch_size:
        raise ImageError(f"image of {w}x{h} is smaller than one {patch_size}-pixel patch")
    if (h, w) != (image.height, image.width):
        image = transforms.Resize((h, w))(image)
    x = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(image))  # (3, h, w)
    ph, pw = math.ceil(h / patch_size) * patch_size, math.ceil(w / patch_size) * patch_size
    padded = torch.zeros(3, ph, pw)  # zeros after normalisation, as the references pad
    padded[:, :h, :w] = x
    return padded[None], (h, w), note


@torch.no_grad()
def extract_features(model: nn.Module, image: Image.Image, resize: int | tuple[int, ...] | None = None,
                     max_patches: int = MAX_PATCHES, preprocess_mode: str = "pad") -> DiscoveryFeatures:
    """One forward pass: last-block q/k/v (heads concatenated, [CLS] and registers dropped; DINOv3's before
    RoPE) and [CLS] attention, or, for ResNet-50, its last feature map layer-normalised over the whole (N, D)
    map as LOST does."""
    device = next(model.parameters()).device
    vit = is_vit(model)
    if not vit and hasattr(model, "family"):  # a ResNetBackbone: its layers are those of the model it wraps
        model = model.model
    patch = model.patch_size if vit else RESNET_PAD
    x, input_hw, note = preprocess(image, patch, resize, max_patches if vit else max_patches * 4, preprocess_mode)
    x = x.to(device)
    original_hw = (image.height, image.width)
    if vit:
        qkv = as_backbone(model).last_qkv(x)  # (1, heads, P + N, hd) each, P = [CLS] + registers
        grid = qkv.grid
        row = cls_attention_row(qkv.q, qkv.k, qkv.scale)[0]  # (heads, P + N), softmax over every token
        attn, prefix = row[:, qkv.num_prefix_tokens:], row[:, :qkv.num_prefix_tokens]  # (heads, N), (heads, P)
        # Similarities come from q/k before RoPE (DINOv3), so that they do not depend on position; the
        # references' transpose(1, 2).reshape concatenates the heads; [CLS] and registers are dropped.
        flat = {name: qkv.patch_part(t)[0].float().cpu()
                for name, t in (("q", qkv.q_unrotated), ("k", qkv.k_unrotated), ("v", qkv.v))}
        return DiscoveryFeatures(flat, attn.reshape(-1, *grid).float().cpu().numpy(), grid,
                                 (float(patch), float(patch)), input_hw, original_hw, note,
                                 prefix_attention=prefix.float().cpu().numpy())
    fmap = x
    for name, child in model.named_children():
        if name in ("avgpool", "fc"):
            break
        fmap = child(fmap)  # (1, 2048, h, w) after layer4
    d, gh, gw = fmap.shape[1:]
    feats = fmap.reshape(d, -1).T  # (N, D)
    feats = F.layer_norm(feats, feats.shape)  # LOST: nn.LayerNorm(feats.size()[1:]) freshly built
    scale = (x.shape[-2] / gh, x.shape[-1] / gw)
    return DiscoveryFeatures({"resnet": feats.float().cpu()}, None, (gh, gw), scale, input_hw, original_hw, note)


def _component_at(mask: np.ndarray, seed: int) -> np.ndarray:
    """The 4-connected component of `mask` (h, w) holding the flat index `seed` (scipy.ndimage.label defaults)."""
    labels, _ = scipy.ndimage.label(mask)
    cc = labels.flat[seed]
    if cc == 0:
        raise ValueError("the seed is not in the foreground")
    return labels == cc


def attention_object(cls_attention: np.ndarray, head: int | None = 0, threshold: float = 0.6
                     ) -> tuple[np.ndarray, int | None, np.ndarray]:
    """DINO-seg as LOST and TokenCut run it: the 60% mass mask of one head (or of the heads' mean map when
    head is None), its largest 4-connected component. Returns (mask (h, w), seed, score map); the mask is
    empty and the seed None when the threshold keeps no patch (threshold 0)."""
    heads = cls_attention.shape[0]
    if head is not None and not -heads <= head < heads:
        raise UserError(f"--dinoseg_head: expected a head in 0..{heads - 1} or 'mean', got {head}")
    amap = cls_attention.mean(axis=0) if head is None else cls_attention[head]
    keep = threshold_masks(torch.from_numpy(np.ascontiguousarray(amap)), threshold).numpy()
    labels, count = scipy.ndimage.label(keep)
    if count == 0:
        return np.zeros(keep.shape, dtype=bool), None, amap.astype(np.float32)
    # LOST's dino_seg sizes only labels 0..max-1, missing the last component; we take the true largest.
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    obj = labels == (int(np.argmax(sizes)) + 1)
    seed = int(np.argmax(np.where(obj, amap, -np.inf)))
    return obj, seed, amap.astype(np.float32)


def lost_object(feats: torch.Tensor, grid: tuple[int, int], k_patches: int = 100
                ) -> tuple[np.ndarray, int, np.ndarray]:
    """LOST: seed = fewest positive correlations, expanded by the similar low-degree patches.

    Returns (mask (h, w), seed, score map M)."""
    f = feats.float()  # raw dot products in float32, as LOST computes them; rows in chunks: never N x N
    degree = torch.cat([((f[i:i + 1024] @ f.T) > 0).sum(dim=1) for i in range(0, len(f), 1024)])
    degree -= ((f * f).sum(dim=1) > 0).long()  # the zeroed diagonal
    # LOST sorts -degree descending; a stable sort makes ties resolve by patch index, reproducibly.
    order = torch.argsort(-degree, descending=True, stable=True)
    seed = int(order[0])
    candidates = order[:k_patches]
    similar = candidates[(f[candidates] @ f[seed]) > 0]
    m = (f[similar] @ f.T).sum(dim=0).reshape(grid).numpy()  # (h, w)
    return _component_at(m > 0, seed), seed, m.astype(np.float32)


def _first_max(x: np.ndarray) -> int:
    """np.argmax, with values equal up to solver round-off counted as ties (first index wins).

    MaskCut's removed patches all have exactly the same eigenvector entry in exact arithmetic; which
    of them scipy's argmax returns is decided by round-off, so dense and iterative solves could differ.
    """
    return int(np.flatnonzero(x >= x.max() - 1e-9 * np.abs(x[np.isfinite(x)]).max())[0])


def _oriented_cut(feats: torch.Tensor, tau: float, eps: float, solver: str) -> tuple[np.ndarray, np.ndarray]:
    """TokenCut's bipartition: x > mean(x); (partition, x) with x flipped so the seed argmax |x| is inside."""
    x = second_eigenvector(feats, tau, eps, solver)
    part = x > x.mean()
    if not part[_first_max(np.abs(x))]:
        x, part = -x, ~part
    return part, x


def _check_tau(tau: float) -> None:
    if not 0 < tau < 1:
        raise UserError(f"--tau: expected a cosine threshold in (0, 1), got {tau}")


def tokencut_object(feats: torch.Tensor, grid: tuple[int, int], tau: float = 0.2, eps: float = 1e-5,
                    solver: str = "auto") -> tuple[np.ndarray, int, np.ndarray]:
    """TokenCut: the component of the normalised-cut partition holding the seed argmax |x|.

    Returns (mask (h, w), seed, oriented eigenvector (h, w))."""
    _check_tau(tau)
    part, x = _oriented_cut(feats, tau, eps, solver)
    seed = _first_max(np.abs(x))
    return _component_at(part.reshape(grid), seed), seed, x.reshape(grid).astype(np.float32)


def _corners(mask: np.ndarray) -> int:
    return int(mask[0, 0]) + int(mask[0, -1]) + int(mask[-1, 0]) + int(mask[-1, -1])


def maskcut_objects(feats: torch.Tensor, grid: tuple[int, int], n_objects: int = 3, tau: float = 0.15,
                    eps: float = 1e-5, solver: str = "auto") -> tuple[list[np.ndarray], list[int], np.ndarray]:
    """MaskCut (CutLER): up to n_objects cuts, each on the graph with earlier objects' patches removed.

    As CutLER's maskcut_forward: removed patches get zero features (so eps affinities) and, unlike
    CutLER where round-off decides, never join the partition; the eigenvector's sign is fixed (argmax |x|
    positive) where CutLER keeps LAPACK's; the partition is flipped when it covers 3 or 4
    corners, else when the seed argmax |x| is outside; the seed is then argmax of the oriented vector; a mask
    is dropped when its IoU with the previous cut's mask exceeds 0.5 or it covers at most 1% of the patches; kept masks lose the patches of earlier objects. The cuts stop early
    once every patch is in an object (a small image with a large n_objects).
    Returns (masks, seeds, the first cut's oriented eigenvector (h, w)).
    """
    _check_tau(tau)
    if n_objects < 1:
        raise UserError(f"--n_objects: expected at least 1, got {n_objects}")
    cut = NormalisedCut(feats, tau, eps, solver)
    removed = np.zeros(grid, dtype=bool)
    previous = np.zeros(grid, dtype=bool)
    masks, seeds, scores = [], [], None
    for i in range(n_objects):
        gone = removed.ravel()
        if gone.all():  # every patch is in an object: nothing is left to cut
            break
        x = cut.second_eigenvector(gone)
        top = _first_max(np.abs(x))  # the same index after any sign flip
        # The corner rule makes CutLER's outcome depend on the solver's arbitrary sign (when the seed's side
        # holds 3 corners, the flipped vector would keep that side): the sign is fixed first, the seed
        # argmax |x| positive, so both solvers and any LAPACK agree.
        x = x if x[top] > 0 else -x
        part = x > x.mean()
        # Removed patches sit at mean(x) / (1 - lambda), next to the split point when mean(x) ~ 0: which
        # side CutLER puts them on is round-off. They are out of the graph, so they join no side here.
        if _corners((part & ~gone).reshape(grid)) >= CORNER_FLIP or not part[top]:
            x, part = -x, ~part
        part &= ~gone
        seed = _first_max(np.where(gone, -np.inf, x))
        if scores is None:
            scores = x.reshape(grid).astype(np.float32)
        # Only removed patches on the seed's side: CutLER's mask would then be removed patches, subtracted to nothing.
        mask = _component_at(part.reshape(grid), seed) if part[seed] else np.zeros(grid, dtype=bool)
        if i > 0 and (mask_iou(previous, mask) > 0.5 or mask.mean() <= 0.01):
            mask = np.zeros(grid, dtype=bool)
        previous = mask
        if (mask & ~removed).any():  # the reference keeps empty ones as all-zero masks; we list objects only
            masks.append(mask & ~removed)
            seeds.append(seed)
        removed |= mask
    return masks, seeds, scores


def patch_box(mask: np.ndarray, scale: tuple[float, float], clip_hw: tuple[int, int]) -> list[float]:
    """[x0, y0, x1, y1]: the mask's patch extent times the patch scale, clipped to the unpadded image."""
    x0, y0, x1, y1 = mask_extent(mask)
    return [float(x0 * scale[1]), float(y0 * scale[0]),
            float(min(x1 * scale[1], clip_hw[1])), float(min(y1 * scale[0], clip_hw[0]))]


def patches_to_pixels(patches: np.ndarray, features: DiscoveryFeatures) -> np.ndarray:
    """Patch masks or maps (k, h, w) to the original image size (k, H, W) by nearest neighbour."""
    if len(patches) == 0:  # no object found (threshold 0): F.interpolate refuses an empty batch
        return np.zeros((0, *features.original_hw), dtype=np.float32)
    gh, gw = features.grid
    padded_hw = (round(gh * features.scale[0]), round(gw * features.scale[1]))
    t = torch.from_numpy(np.ascontiguousarray(patches)).float()[None]  # (1, k, h, w)
    t = F.interpolate(t, size=padded_hw, mode="nearest")[..., :features.input_hw[0], :features.input_hw[1]]
    if features.input_hw != features.original_hw:
        t = F.interpolate(t, size=features.original_hw, mode="nearest")
    return t[0].numpy()


def _to_original(box: list[float], features: DiscoveryFeatures) -> list[float]:
    (h, w), (h0, w0) = features.input_hw, features.original_hw
    sx, sy = w0 / w, h0 / h
    return [float(min(box[0] * sx, w0)), float(min(box[1] * sy, h0)), float(min(box[2] * sx, w0)),
            float(min(box[3] * sy, h0))]


def discover(features: DiscoveryFeatures, method: str = "tokencut", *, tau: float | None = None,
             eps: float = 1e-5, k_patches: int = 100, n_objects: int | str = 3, which_features: str = "k",
             dinoseg_head: int | None = 0, threshold: float = 0.6, solver: str = "auto",
             score_objects: bool = False) -> DiscoveryResult:
    """Run one discovery method on the features of one forward pass (`threshold`: the attention method's mass).

    `n_objects` "auto" keeps only objects (objectness.py's rule, score >= 0.5): MaskCut cuts until a cut is no
    object, the one-object methods give no object rather than a forced one (TokenCut issue 20); `stop_score` is
    the refused object's score. `score_objects` fills `object_scores` (1 - Ncut on TokenCut's graph at this tau;
    MaskCut's objects each on the graph without the earlier ones)."""
    if method not in METHODS:
        raise UserError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if not features.is_vit and method != "lost":
        raise UserError(f"--method {method} needs a ViT's attention keys; ResNet-50 weights only run --method lost")
    if tau is None:
        tau = DEFAULT_TAU.get(method, 0.2)
    n_patches = features.grid[0] * features.grid[1]
    if method in ("tokencut", "maskcut") and n_patches < MIN_CUT_PATCHES:
        h, w = features.original_hw
        raise ImageError(f"image of {w}x{h} gives {n_patches} patch(es): --method {method} cuts a graph of at least "
                         f"{MIN_CUT_PATCHES}; use a larger image or --resize")
    if method == "attention":
        mask, seed, scores = attention_object(features.cls_attention, dinoseg_head, threshold)
        masks, seeds = ([mask], [seed]) if seed is not None else ([], [])
    elif method == "lost":
        if k_patches < 1:
            raise UserError(f"--k_patches: expected at least 1, got {k_patches}")
        mask, seed, scores = lost_object(features.features(which_features), features.grid, k_patches)
        masks, seeds = [mask], [seed]
    elif method == "tokencut":
        mask, seed, scores = tokencut_object(features.features(which_features), features.grid, tau, eps, solver)
        masks, seeds = [mask], [seed]
    else:
        auto = n_objects == "auto"
        if not auto and not isinstance(n_objects, int):
            raise UserError(f"--n_objects: expected a number or 'auto', got {n_objects!r}")
        masks, seeds, scores = maskcut_objects(features.features(which_features), features.grid,
                                               AUTO_MAX_OBJECTS if auto else n_objects, tau, eps, solver)
    patches = np.stack(masks) if masks else np.zeros((0, *features.grid), dtype=bool)
    ncuts, stop_score = None, None
    if n_objects == "auto" or score_objects:
        ncuts = object_ncuts(features.features(which_features), patches, tau, eps, sequential=method == "maskcut")
    if n_objects == "auto":
        count = auto_count(ncuts)  # MaskCut stops at the first cut that is no object; the others keep theirs or none
        patches, seeds, ncuts = patches[:count.kept], seeds[:count.kept], ncuts[:count.kept]
        stop_score = count.stop_score
    boxes = [_to_original(patch_box(m, features.scale, features.input_hw), features) for m in patches]
    pixels = patches_to_pixels(patches, features).astype(bool)
    return DiscoveryResult(method, patches, pixels, boxes, scores.astype(np.float32), seeds, features.note,
                           None if ncuts is None else [score_from_ncut(v) for v in ncuts], stop_score)
