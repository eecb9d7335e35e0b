"""Video label propagation as DINOv3's segmentation_tracking notebook does it (short side 960, RoPE-era protocol).

Each frame: resized to a short side of 960 with both sides rounded up to multiples of the patch (bicubic),
ImageNet-normalised; last-layer normed patch features, L2-normalised. The first frame's mask goes to the
feature grid by `nearest-exact` and is one-hot encoded. Each later frame takes its probabilities from a
context of the first frame plus up to 7 previous frames (their raw propagated probabilities): within a
circle of radius 12 patches, the top 5 similarities per patch, softmax of similarity / 0.2 over the kept
values, renormalised. Predictions: probabilities upsampled by nearest to the annotation size, min-max
normalised per object, argmax.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from .backbones import Backbone, as_backbone
from .davis import VOID_LABEL, DavisError, num_objects
from .errors import UserError
from .images import IMAGENET_MEAN, IMAGENET_STD, load_image

# Query rows x context patches compared at once: bounds memory (the notebook holds them all on a GPU).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class TrackingConfig:
    """The notebook's constants (SHORT_SIDE, MAX_CONTEXT_LENGTH, NEIGHBORHOOD_SIZE / _SHAPE, TOPK, TEMPERATURE)."""

    short_side: int = 960
    context: int = 7
    radius: float = 12
    shape: str = "circle"
    topk: int = 5
    temperature: float = 0.2

    def check(self) -> None:
        if self.short_side < 1:
            raise UserError(f"--short_side: expected a positive number of pixels, got {self.short_side}")
        if self.context < 0:
            raise UserError(f"--n_last_frames: expected 0 or more context frames, got {self.context}")
        if self.topk < 1:
            raise UserError(f"--topk: expected a positive number, got {self.topk}")
        if self.temperature <= 0:
            raise UserError(f"--temperature: expected a positive number, got {self.temperature}")
        if self.shape not in ("circle", "square"):
            raise UserError(f"neighbourhood shape: expected circle or square, got {self.shape!r}")


def resized_size(width: int, height: int, short_side: int, multiple: int) -> tuple[int, int]:
    """(H, W) of the notebook's ResizeToMultiple: the short side becomes `short_side` rounded up to a multiple of
    the patch, the long side keeps the aspect ratio and is rounded up too."""
    def up(side: float) -> int:
        return math.ceil(side / multiple) * multiple

    if width > height:
        new_h = up(short_side)
        return new_h, up(width * new_h / height)
    new_w = up(short_side)
    return up(height * new_w / width), new_w


def frame_tensor(image: Image.Image, short_side: int, patch_size: int) -> torch.Tensor:
    """One RGB frame resized (bicubic) and ImageNet-normalised: (3, H, W), H and W multiples of the patch."""
    h, w = resized_size(image.width, image.height, short_side, patch_size)
    resized = transforms.functional.resize(image, [h, w], interpolation=transforms.InterpolationMode.BICUBIC)
    return transforms.functional.normalize(transforms.functional.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)


@torch.no_grad()
def frame_features(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Last-layer normed patch features of one frame (3, H, W), L2-normalised: (h, w, D)."""
    return F.normalize(backbone.patch_features(x[None])[0], dim=-1, p=2)


def first_frame_probs(mask: np.ndarray | torch.Tensor, grid: tuple[int, int], num_masks: int) -> torch.Tensor:
    """One-hot probabilities (h, w, M) of an (H', W') label mask taken to the grid by `nearest-exact`."""
    mask = torch.as_tensor(np.asarray(mask)).long()
    small = F.interpolate(mask[None, None].float(), grid, mode="nearest-exact")[0, 0].long()  # (h, w)
    return F.one_hot(small, num_masks).float()  # (h, w, M)


def neighbourhood_mask(h: int, w: int, radius: float, shape: str = "circle",
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """(h, w, h, w) bool: whether a context patch lies within `radius` patches of a query patch."""
    ij = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                    torch.arange(w, dtype=torch.float32, device=device), indexing="ij"), dim=-1)
    order = 2 if shape == "circle" else math.inf
    dist = torch.linalg.vector_norm(ij[:, :, None, None, :] - ij[None, None, :, :, :], ord=order, dim=-1)
    return dist <= radius  # (h, w, h, w)


def propagate(current: torch.Tensor, context_feats: torch.Tensor, context_probs: torch.Tensor,
              neighbourhood: torch.Tensor, topk: int = 5, temperature: float = 0.2) -> torch.Tensor:
    """Probabilities of the current frame (h, w, M) from its features (h, w, D) and the context's
    features (t, h, w, D) and probabilities (t, h, w, M), within `neighbourhood` (h, w, h, w).

    Computed in chunks of query patches; each row is the notebook's: masked dot products, the values at or
    above the k-th largest kept (ties included), softmax of dot / temperature, renormalised.
    """
    t, h, w, m = context_probs.shape
    queries = current.reshape(h * w, -1)  # (hw, D)
    keys = context_feats.reshape(t * h * w, -1)  # (thw, D)
    probs = context_probs.reshape(t * h * w, m)  # (thw, M)
    near = neighbourhood.reshape(h * w, 1, h * w)  # (hw, 1, hw): the same neighbourhood in every context frame
    chunk = max(1, _CHUNK_ELEMENTS // max(1, t * h * w))
    out = []
    for start in range(0, h * w, chunk):
        stop = min(start + chunk, h * w)
        dot = (queries[start:stop] @ keys.T).reshape(stop - start, t, h * w)  # (c, t, hw)
        dot = torch.where(near[start:stop], dot, -torch.inf).reshape(stop - start, t * h * w)  # (c, thw)
        kth = torch.topk(dot, dim=1, k=min(topk, dot.shape[1])).values[:, -1:]  # (c, 1)
        dot = torch.where(dot >= kth, dot, -torch.inf)
        weights = F.softmax(dot / temperature, dim=1)  # (c, thw)
        current_probs = weights @ probs  # (c, M)
        out.append(current_probs / current_probs.sum(dim=1, keepdim=True))
    return torch.cat(out).reshape(h, w, m)  # (h, w, M)


def upsample_probs(probs: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Probabilities (h, w, M) → (M, H', W'): nearest upsampling, then min-max per object (constant maps → 0)."""
    p = F.interpolate(probs.movedim(-1, 0)[None], size=size_hw, mode="nearest")  # (1, M, H', W')
    vmin = p.flatten(2).min(dim=2).values[:, :, None, None]
    vmax = p.flatten(2).max(dim=2).values[:, :, None, None]
    return torch.nan_to_num((p - vmin) / (vmax - vmin), nan=0.0)[0]  # (M, H', W')


class Tracker:
    """The notebook's propagation loop: the first frame plus a queue of up to `context` previous frames."""

    def __init__(self, first_feats: torch.Tensor, first_probs: torch.Tensor, config: TrackingConfig) -> None:
        config.check()
        self.config = config
        self.first_feats = first_feats  # (h, w, D)
        self.first_probs = first_probs  # (h, w, M)
        self.feats_queue: deque[torch.Tensor] = deque(maxlen=config.context)
        self.probs_queue: deque[torch.Tensor] = deque(maxlen=config.context)
        h, w = first_feats.shape[:2]
        self.neighbourhood = neighbourhood_mask(h, w, config.radius, config.shape, first_feats.device)

    def step(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw probabilities (h, w, M) of the next frame from its features (h, w, D); it joins the context."""
        if feats.shape != self.first_feats.shape:
            raise UserError(f"frame features {tuple(feats.shape)} differ from the first frame's "
                             f"{tuple(self.first_feats.shape)}: every frame of a video must have the same size")
        context_feats = torch.stack([self.first_feats, *self.feats_queue])  # (1 + t, h, w, D)
        context_probs = torch.stack([self.first_probs, *self.probs_queue])  # (1 + t, h, w, M)
        probs = propagate(feats, context_feats, context_probs, self.neighbourhood, self.config.topk,
                          self.config.temperature)
        if self.config.context:
            self.feats_queue.append(feats)
            self.probs_queue.append(probs)
        return probs


@torch.no_grad()
def track(backbone: Backbone, frames: Iterable[Image.Image], first_mask: np.ndarray,
          config: TrackingConfig = TrackingConfig(), num_masks: int | None = None) -> Iterator[np.ndarray]:
    """Label maps (H', W') uint8 at the first mask's size for every frame, the first being `first_mask` itself.

    `first_mask` holds labels 0 (background) to M - 1; `num_masks` defaults to its largest label + 1.
    """
    config.check()
    backbone = as_backbone(backbone)
    device = next(backbone.parameters()).device
    first_mask = np.asarray(first_mask)
    m = int(first_mask.max()) + 1 if num_masks is None else num_masks
    size_hw = first_mask.shape[:2]
    tracker = None
    for image in frames:
        feats = frame_features(backbone, frame_tensor(image, config.short_side, backbone.patch_size).to(device))
        if tracker is None:
            probs = first_frame_probs(torch.from_numpy(first_mask.astype(np.int64)).to(device), feats.shape[:2], m)
            tracker = Tracker(feats, probs, config)
            yield first_mask.astype(np.uint8)
            continue
        probs = upsample_probs(tracker.step(feats), size_hw)  # (M, H', W')
        yield probs.argmax(dim=0).to(torch.uint8).cpu().numpy()


def segment_sequence_v3(backbone: Backbone, frames: Sequence[str | Path], first_annotation: np.ndarray,
                        config: TrackingConfig = TrackingConfig()) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, (H, W) uint8 object indices) for frames 1.. of a DAVIS sequence under this protocol, given
    the first frame's annotation (H, W) uint8 (255 = void, taken as background). Outputs have the annotation's
    size, which is the frames' own."""
    labels = np.where(first_annotation == VOID_LABEL, 0, first_annotation).astype(np.uint8)

    def read_all() -> Iterator[Image.Image]:
        for path in frames:
            image = load_image(path)
            if (image.height, image.width) != labels.shape:
                raise DavisError(f"frame {path} is {image.width}x{image.height}, unlike the first frame's "
                                 f"annotation {labels.shape[1]}x{labels.shape[0]}")
            yield image

    masks = track(backbone, read_all(), labels, config, num_masks=num_objects(first_annotation) + 1)
    next(masks)  # the first frame: its annotation
    yield from enumerate(masks, start=1)
