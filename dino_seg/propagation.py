"""Label propagation for semi-supervised video object segmentation (eval_video_segmentation.py's algorithm).

`propagate_labels` gives the reference's output without its (HW)x(HW) tensors: for each tile of T x T query
patches it compares the queries with the (T + 2r)^2 source patches around the tile only, so memory grows with
HW x (T + 2r)^2, not HW^2. `dense_propagate_labels` is the plain dense formula, kept for tests and benchmarks.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dino_seg.davis import DavisError, first_frame_labels, num_objects, read_frame
from dino_seg.errors import UserError
from dino_seg.models import patch_features

# Queries x sources handled at once in the global (no-window) case; bounds its memory.
_GLOBAL_CHUNK_ELEMENTS = 1 << 24


def _check_inputs(context_feats: torch.Tensor, context_labels: torch.Tensor, target_feats: torch.Tensor,
                  topk: int) -> None:
    if context_feats.ndim != 4 or target_feats.ndim != 3 or context_labels.ndim != 4:
        raise ValueError("expected context_feats (N, h, w, D), context_labels (N, C, h, w), target_feats (h, w, D); "
                         f"got {tuple(context_feats.shape)}, {tuple(context_labels.shape)}, "
                         f"{tuple(target_feats.shape)}")
    n, h, w, d = context_feats.shape
    if target_feats.shape != (h, w, d):
        raise ValueError(f"target_feats {tuple(target_feats.shape)} does not match context_feats {(n, h, w, d)}")
    if context_labels.shape[0] != n or context_labels.shape[2:] != (h, w):
        raise ValueError(f"context_labels {tuple(context_labels.shape)} does not match context_feats {(n, h, w, d)}")
    if topk < 1:
        raise UserError(f"--topk: expected a positive number, got {topk}")


def _keep_topk(aff: torch.Tensor, topk: int) -> torch.Tensor:
    """Zero every affinity below the k-th largest of its row, then normalise rows to sum 1.

    As the reference (`aff[aff < tk_val_min] = 0`): ties with the k-th value are all kept, and where fewer than
    k sources are unmasked the k-th value is a masked 0, so every unmasked source is kept.
    """
    if topk <= aff.shape[-1]:
        kth = torch.topk(aff, k=topk, dim=-1).values.amin(dim=-1, keepdim=True)
        aff = aff.masked_fill(aff < kth, 0.0)
    # (else the reference's torch.topk would fail; every source is kept)
    return aff / aff.sum(dim=-1, keepdim=True)


def _propagate_global(q: torch.Tensor, s: torch.Tensor, labels: torch.Tensor, topk: int,
                      temperature: float) -> torch.Tensor:
    # q (HW, D), s (N*HW, D), labels (N*HW, C) -> (HW, C)
    chunk = max(1, _GLOBAL_CHUNK_ELEMENTS // max(1, s.shape[0]))
    out = []
    for start in range(0, q.shape[0], chunk):
        aff = torch.exp(q[start:start + chunk] @ s.T / temperature)  # (Qc, N*HW)
        out.append(_keep_topk(aff, topk) @ labels)  # (Qc, C)
    return torch.cat(out)


def _window_mask(tile: int, radius: int, device: torch.device) -> torch.Tensor:
    """(T*T, R*R) bool: which region cells lie within +-radius of each query of a tile (R = T + 2r)."""
    region = tile + 2 * radius
    a = torch.arange(tile, device=device)
    u = torch.arange(region, device=device)
    # A query at tile offset a sits at region offset a + r; its window spans a .. a + 2r.
    rows = (u[None, :] >= a[:, None]) & (u[None, :] <= a[:, None] + 2 * radius)  # (T, R)
    return (rows[:, None, :, None] & rows[None, :, None, :]).reshape(tile * tile, region * region)


def propagate_labels(
    context_feats: torch.Tensor,
    context_labels: torch.Tensor,
    target_feats: torch.Tensor,
    *,
    topk: int = 5,
    radius: int = 12,
    temperature: float = 0.1,
    tile: int = 8,
    region_budget: int = 1 << 23,
) -> torch.Tensor:
    """Soft labels (C, h, w) of a target frame from context frames, equal to the reference's formula.

    context_feats (N, h, w, D), context_labels (N, C, h, w), target_feats (h, w, D); features need not be
    normalised. Affinity exp(cos / temperature) restricted to a (2r+1)^2 window (r = `radius`; r <= 0 means
    no restriction, as in the reference), top-k over all context patches together, weights normalised to 1.
    `tile` (query tile side) and `region_budget` (floats of unfolded source features per step) only trade
    speed for memory. Runs on the inputs' device.
    """
    _check_inputs(context_feats, context_labels, target_feats, topk)
    n, h, w, d = context_feats.shape
    c = context_labels.shape[1]
    q = F.normalize(target_feats.float(), dim=-1)  # (h, w, D)
    s = F.normalize(context_feats.float(), dim=-1)  # (N, h, w, D)
    labels = context_labels.float().permute(0, 2, 3, 1)  # (N, h, w, C)

    if radius <= 0 or radius >= max(h, w) - 1:
        # No restriction (reference: size_mask_neighborhood 0), or a window covering the whole frame.
        out = _propagate_global(q.reshape(h * w, d), s.reshape(n * h * w, d), labels.reshape(n * h * w, c),
                                topk, temperature)
        return out.T.reshape(c, h, w)

    t, r = max(1, int(tile)), int(radius)
    big = t + 2 * r  # region side R
    n_ty, n_tx = -(-h // t), -(-w // t)
    pad = (0, 0, r, r + n_tx * t - w, r, r + n_ty * t - h)  # (D: none, w: left/right, h: top/bottom)
    s_pad = F.pad(s, pad)  # (N, Hp, Wp, D), zero features outside the frame
    l_pad = F.pad(labels, pad)  # (N, Hp, Wp, C)
    inside = F.pad(torch.ones(h, w, 1, device=q.device), pad)[..., 0] > 0  # (Hp, Wp)
    # Dividing the queries by the temperature once replaces dividing every affinity.
    q_pad = F.pad(q / temperature, (0, 0, 0, n_tx * t - w, 0, n_ty * t - h))  # (n_ty*T, n_tx*T, D)
    outside = ~_window_mask(t, r, q.device)  # (T*T, R*R)

    # Tiles per step: their unfolded regions (tiles x N*R*R x D floats) stay within the budget.
    step = max(1, min(n_tx, region_budget // (n * big * big * d)))
    out = torch.empty(n_ty * t, n_tx * t, c, device=q.device)
    for ty in range(n_ty):
        band = slice(ty * t, ty * t + big)
        for tx in range(0, n_tx, step):
            m = min(step, n_tx - tx)
            cols = slice(tx * t, (tx + m - 1) * t + big)
            queries = q_pad[ty * t:(ty + 1) * t, tx * t:(tx + m) * t]  # (T, m*T, D)
            queries = queries.reshape(t, m, t, d).transpose(0, 1).reshape(m, t * t, d)  # (m, T*T, D)
            # The R x R source patches around each tile, all contexts together: (m, N*R*R, D).
            regions = s_pad[:, band, cols].unfold(2, big, t)  # (N, R, m, D, R)
            regions = regions.permute(2, 0, 1, 4, 3).reshape(m, n * big * big, d)
            logits = torch.bmm(queries, regions.transpose(1, 2)).view(m, t * t, n, big * big)  # (m, T*T, N, R*R)
            invalid = ~inside[band, cols].unfold(1, big, t).permute(1, 0, 2).reshape(m, 1, big * big)
            # exp(-inf) = 0 exactly: the reference's exp(aff) * mask, masked sources being 0 (not dropped).
            logits.masked_fill_((outside[None] | invalid)[:, :, None, :], float("-inf"))
            aff = logits.exp_().view(m, t * t, n * big * big)  # (m, T*T, N*R*R)
            if topk <= aff.shape[-1]:
                kth = torch.topk(aff, k=topk, dim=-1).values[..., -1:]  # (m, T*T, 1)
                aff.masked_fill_(aff < kth, 0.0)
            region_labels = l_pad[:, band, cols].unfold(2, big, t)  # (N, R, m, C, R)
            region_labels = region_labels.permute(2, 0, 1, 4, 3).reshape(m, n * big * big, c)  # (m, N*R*R, C)
            res = torch.bmm(aff, region_labels) / aff.sum(dim=-1, keepdim=True)  # (m, T*T, C)
            out[ty * t:(ty + 1) * t, tx * t:(tx + m) * t] = res.view(m, t, t, c).transpose(0, 1).reshape(t, m * t, c)
    return out[:h, :w].permute(2, 0, 1).contiguous()  # (C, h, w)


def neighborhood_mask(h: int, w: int, radius: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(h*w, h*w) 0/1 float mask of the reference's restrict_neighborhood (vectorised)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    near = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    return near.float()


def dense_propagate_labels(
    context_feats: torch.Tensor,
    context_labels: torch.Tensor,
    target_feats: torch.Tensor,
    *,
    topk: int = 5,
    radius: int = 12,
    temperature: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reference's dense formula: a context x HW x HW affinity and an (HW)x(HW) mask. (C, h, w).

    Memory grows with N * (HW)^2: for tests and the benchmark baseline only. `mask` may pass a precomputed
    neighborhood_mask, as the reference caches it across frames.
    """
    _check_inputs(context_feats, context_labels, target_feats, topk)
    n, h, w, d = context_feats.shape
    c = context_labels.shape[1]
    tar = F.normalize(target_feats.float().reshape(h * w, d), dim=1, p=2)  # (HW, D)
    src = F.normalize(context_feats.float().reshape(n, h * w, d), dim=2, p=2)  # (N, HW, D)
    aff = torch.exp(torch.bmm(tar.unsqueeze(0).repeat(n, 1, 1), src.transpose(1, 2)) / temperature)  # (N, HWq, HWs)
    if radius > 0:
        if mask is None:
            mask = neighborhood_mask(h, w, radius, aff.device)
        aff *= mask.unsqueeze(0)
    aff = aff.transpose(2, 1).reshape(-1, h * w)  # (N*HWs, HWq)
    tk_val_min = torch.topk(aff, dim=0, k=topk).values.min(dim=0).values
    aff[aff < tk_val_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, dim=0)
    segs = context_labels.float().reshape(n, c, -1).transpose(2, 1).reshape(-1, c).T  # (C, N*HW)
    return torch.mm(segs, aff).reshape(c, h, w)


def norm_mask(mask: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max normalisation of (C, H, W), for channels whose max is positive (reference)."""
    mx = mask.amax(dim=(1, 2), keepdim=True)
    mn = mask.amin(dim=(1, 2), keepdim=True)
    # A constant positive channel gives 0/0 = NaN, as in the reference.
    return torch.where(mx > 0, (mask - mn) / (mx - mn), mask)


def soft_to_mask(soft: torch.Tensor, patch_size: int, original_hw: tuple[int, int]) -> np.ndarray:
    """(C, h, w) soft labels -> (H, W) uint8 object indices at the original frame size, as the reference:
    bilinear upsampling by the patch size, per-object min-max normalisation, argmax, nearest resize."""
    up = F.interpolate(soft[None].float(), scale_factor=patch_size, mode="bilinear", align_corners=False,
                       recompute_scale_factor=False)[0]  # (C, h*p, w*p)
    _, seg = torch.max(norm_mask(up), dim=0)  # (h*p, w*p)
    seg = seg.to("cpu", torch.uint8).numpy()
    return np.array(Image.fromarray(seg).resize((original_hw[1], original_hw[0]), Image.NEAREST))


@torch.no_grad()
def frame_features(model: nn.Module, frames: Iterable[torch.Tensor], *, bs: int = 6,
                   device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Patch features (h, w, D) of each frame (3, H, W), the backbone run on batches of `bs` frames."""
    if bs < 1:
        raise UserError(f"--bs: expected a positive batch size, got {bs}")
    batch: list[torch.Tensor] = []

    def run(items: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        feats = patch_features(model, torch.stack(items).to(device))  # (B, h, w, D)
        yield from feats.float().unbind(0)

    for frame in frames:
        batch.append(frame)
        if len(batch) == bs:
            yield from run(batch)
            batch = []
    if batch:
        yield from run(batch)


def propagate_sequence(
    feats: Iterable[torch.Tensor],
    first_labels: torch.Tensor,
    *,
    n_last_frames: int = 7,
    topk: int = 5,
    radius: int = 12,
    temperature: float = 0.1,
) -> Iterator[torch.Tensor]:
    """Soft labels (C, h, w) of frames 1, 2, ... from their features (h, w, D), the first frame's
    features leading `feats`, and its labels `first_labels` (C, h, w).

    Context of each frame: the first frame with its labels plus the `n_last_frames` previous predictions
    (soft, not argmaxed), as the reference's queue.
    """
    if n_last_frames < 0:
        raise UserError(f"--n_last_frames: expected 0 or more, got {n_last_frames}")
    it = iter(feats)
    try:
        first = next(it)
    except StopIteration:
        return
    first_labels = first_labels.to(first.device, torch.float32)
    recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=n_last_frames or None)
    for feat in it:
        ctx_feats = torch.stack([first] + [f for f, _ in recent]) if n_last_frames else first[None]
        ctx_labels = torch.stack([first_labels] + [s for _, s in recent]) if n_last_frames else first_labels[None]
        soft = propagate_labels(ctx_feats, ctx_labels, feat, topk=topk, radius=radius, temperature=temperature)
        if n_last_frames:
            recent.append((feat, soft))
        yield soft


def segment_sequence(
    model: nn.Module,
    frames: Sequence[str | Path],
    first_annotation: np.ndarray,
    *,
    n_last_frames: int = 7,
    topk: int = 5,
    radius: int = 12,
    temperature: float = 0.1,
    bs: int = 6,
    device: torch.device | str = "cpu",
    short_side: int = 480,
) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, (H, W) uint8 object indices) for frames 1.. of a sequence, given the first frame's
    annotation (H, W) uint8 (255 = void). Frames are read as the reference reads them."""
    patch_size = int(model.patch_size)
    first_frame, ori_h, ori_w = read_frame(frames[0], short_side)
    if first_annotation.shape != (ori_h, ori_w):
        raise DavisError(f"first-frame annotation is {first_annotation.shape[1]}x{first_annotation.shape[0]} but "
                         f"frame {frames[0]} is {ori_w}x{ori_h}")
    labels = first_frame_labels(first_annotation, tuple(first_frame.shape[1:]), patch_size,
                                n_objects=num_objects(first_annotation))
    sizes: dict[int, tuple[int, int]] = {}

    def read_all() -> Iterator[torch.Tensor]:
        yield first_frame
        for idx in range(1, len(frames)):
            x, fh, fw = read_frame(frames[idx], short_side)
            if x.shape != first_frame.shape:
                raise DavisError(f"frame {frames[idx]} is {fw}x{fh}, unlike the first frame {ori_w}x{ori_h}")
            sizes[idx] = (fh, fw)
            yield x

    feats = frame_features(model, read_all(), bs=bs, device=device)
    softs = propagate_sequence(feats, labels, n_last_frames=n_last_frames, topk=topk, radius=radius,
                               temperature=temperature)
    for idx, soft in enumerate(softs, start=1):
        yield idx, soft_to_mask(soft, patch_size, sizes[idx])
