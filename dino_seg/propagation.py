"""Label propagation for semi-supervised video object segmentation (eval_video_segmentation.py's algorithm).

`propagate_labels` gives the reference's output without its (HW)x(HW) tensors: for each tile of T x T query
patches it compares the queries with the (T + 2r)^2 source patches around the tile only, so memory grows with
HW x (T + 2r)^2, not HW^2. `dense_propagate_labels` is the plain dense formula, kept for tests and benchmarks.
"""
from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dino_seg.batching import prefetched
from dino_seg.precision import autocast, cpu_has_bf16
from dino_seg.davis import DavisError, first_frame_labels, num_objects, read_frame
from dino_seg.errors import UserError
from dino_seg.models import patch_features

# Queries x sources handled at once in the global (no-window) case; bounds its memory.
_GLOBAL_CHUNK_ELEMENTS = 1 << 24
# Candidates per query kept from the bfloat16 pre-pass of `_propagate_prefiltered`, and the share of queries it
# may leave unsettled (each then costs about 0.3 ms on 2 CPU cores) before float32 throughout is cheaper.
_PREFILTER_CANDIDATES = 16
_PREFILTER_MAX_UNSURE = 0.1
# Error bounds of that pre-pass. PyTorch converts float32 to bfloat16 by rounding to nearest even, so each input
# element moves by at most 2^-8 of itself; the product's bfloat16 output is bounded by 2^-7, which also covers
# back ends that truncate. Float32 accumulation over k terms adds at most _gamma(k) of the terms' sum.
_BF16_INPUT_ROUNDING = 2.0 ** -8
_BF16_OUTPUT_ROUNDING = 2.0 ** -7


def _gamma(k: int) -> float:
    """Higham's gamma_k for float32: the relative error bound of a sum or dot product of k terms."""
    u = 2.0 ** -24
    return k * u / (1 - k * u)


def bf16_matmul_is_fast(device: torch.device) -> bool:
    """Whether propagation's bfloat16 pre-pass pays off on `device`: a CPU whose bfloat16 instructions oneDNN
    uses (about 5x float32's matrix product there). On CUDA the float32 path is kept: it is not the bottleneck."""
    return torch.device(device).type == "cpu" and cpu_has_bf16()


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


def _top_k_average(top_logits: torch.Tensor, top_labels: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's top-k weighting from each query's k + 1 largest logits, sorted descending (..., k+1),
    and the labels of its first k sources (..., k, C): (soft labels (..., C), tied (...) bool).

    exp is monotonic, so where exp of the (k+1)-th logit differs from exp of the k-th, the reference keeps
    exactly these k sources and only their k exponentials are needed. `tied` marks the queries where they are
    equal (equal features, or at most k sources in reach): the reference keeps more there, so the caller
    recomputes those with `_keep_topk`. Shared by the windowed and the unrestricted paths."""
    aff = top_logits.exp()  # (..., k+1)
    keep = aff.shape[-1]
    weights = aff[..., :topk]  # (..., k)
    out = torch.einsum("...k,...kc->...c", weights, top_labels) / weights.sum(-1, keepdim=True)
    if keep <= topk:  # fewer than k + 1 sources: every one is kept, the reference's rule decides
        return out, torch.ones(aff.shape[:-1], dtype=torch.bool, device=aff.device)
    return out, aff[..., -1] >= aff[..., topk - 1]


def _propagate_global(q: torch.Tensor, s: torch.Tensor, labels: torch.Tensor, topk: int,
                      temperature: float) -> torch.Tensor:
    # q (HW, D), s (N*HW, D), labels (N*HW, C) -> (HW, C)
    chunk = max(1, _GLOBAL_CHUNK_ELEMENTS // max(1, s.shape[0]))
    keep = min(topk + 1, s.shape[0])
    out = []
    for start in range(0, q.shape[0], chunk):
        logits = q[start:start + chunk] @ s.T / temperature  # (Qc, N*HW)
        vals, idx = torch.topk(logits, keep, dim=-1)  # (Qc, k+1)
        soft, tied = _top_k_average(vals, labels[idx[:, :topk]], topk)  # (Qc, C)
        if tied.any():
            soft[tied] = _keep_topk(torch.exp(logits[tied]), topk) @ labels
        out.append(soft)
    return torch.cat(out)


def _in_window(tile: int, radius: int, device: torch.device) -> torch.Tensor:
    """(T, T + 2r) bool: whether region offset u lies in the window of the query at tile offset a. That query sits
    at region offset a + r, so its window spans region offsets a .. a + 2r (rows and columns alike)."""
    a, u = torch.arange(tile, device=device), torch.arange(tile + 2 * radius, device=device)
    return (u[None, :] >= a[:, None]) & (u[None, :] <= a[:, None] + 2 * radius)


@functools.lru_cache(maxsize=16)
def _tile_biases(h: int, w: int, radius: int, tile: int, device: torch.device) -> torch.Tensor:
    """(tiles, T*T, R, 1, R) additive biases, 0 where a region cell is a source of a tile's query and -inf where
    it lies outside the query's +-radius window or outside the frame (R = T + 2r; tiles in row-major order).
    Cached: every frame of a video has the same grid."""
    t, r = tile, radius
    big = t + 2 * r
    n_ty, n_tx = -(-h // t), -(-w // t)
    u = torch.arange(big, device=device)
    near = _in_window(t, r, device)  # (T, R)
    rows = torch.arange(n_ty, device=device)[:, None] * t + u[None, :] - r  # (n_ty, R) source row of each cell
    cols = torch.arange(n_tx, device=device)[:, None] * t + u[None, :] - r  # (n_tx, R)
    row_ok = near[None] & ((rows >= 0) & (rows < h))[:, None, :]  # (n_ty, T, R)
    col_ok = near[None] & ((cols >= 0) & (cols < w))[:, None, :]  # (n_tx, T, R)
    ok = row_ok[:, None, :, None, :, None] & col_ok[None, :, None, :, None, :]  # (n_ty, n_tx, T, T, R, R)
    bias = torch.zeros(ok.shape, device=device).masked_fill_(~ok, float("-inf"))
    return bias.reshape(n_ty * n_tx, t * t, big, 1, big)


def propagate_labels(
    context_feats: torch.Tensor,
    context_labels: torch.Tensor,
    target_feats: torch.Tensor,
    *,
    topk: int = 5,
    radius: int = 12,
    temperature: float = 0.1,
    tile: int | None = None,
    prefilter: bool | None = None,
) -> torch.Tensor:
    """Soft labels (C, h, w) of a target frame from context frames, equal to the reference's formula.

    context_feats (N, h, w, D), context_labels (N, C, h, w), target_feats (h, w, D); features need not be
    normalised. Affinity exp(cos / temperature) restricted to a (2r+1)^2 window (r = `radius`; r <= 0 means
    no restriction, as in the reference), top-k over all context patches together, weights normalised to 1.
    `tile` (query tile side; default: 8, or `prefilter_tile` with the pre-pass) only trades speed for memory.
    Runs on the inputs' device.

    Per tile of T x T queries, one batched matrix product compares them with the (T + 2r)^2 source patches
    around the tile in every context, read in place from a (rows, contexts, columns, D) layout (no copies of
    the sources); the top k + 1 logits per query then decide which sources the reference keeps: exp is
    monotonic, so where exp of the (k+1)-th differs from exp of the k-th, exactly the top k are kept and only
    their k exponentials are needed. Queries with a tie there (equal features, or fewer than k sources) are
    recomputed with the reference's rule, keeping every source at or above the k-th value.

    `prefilter` (default: on a CPU with bfloat16 matrix instructions) finds each query's candidates with a
    bfloat16 product first and computes only theirs in float32; the output is the same (see
    `_propagate_prefiltered`), and where bfloat16 cannot rank most sources the call continues in float32.
    False keeps every product in float32.
    """
    return _propagate_labels(context_feats, context_labels, target_feats, topk=topk, radius=radius,
                             temperature=temperature, tile=tile, prefilter=prefilter)[0]


def _propagate_labels(context_feats: torch.Tensor, context_labels: torch.Tensor, target_feats: torch.Tensor, *,
                      topk: int, radius: int, temperature: float, tile: int | None,
                      prefilter: bool | None) -> tuple[torch.Tensor, bool]:
    """`propagate_labels` and whether its bfloat16 pre-pass was tried and gave up on this frame."""
    _check_inputs(context_feats, context_labels, target_feats, topk)
    n, h, w, d = context_feats.shape
    c = context_labels.shape[1]
    q = F.normalize(target_feats.float(), dim=-1)  # (h, w, D)
    s = F.normalize(context_feats.float(), dim=-1)  # (N, h, w, D)

    if radius <= 0 or radius >= max(h, w) - 1:
        # No restriction (reference: size_mask_neighborhood 0), or a window covering the whole frame.
        labels = context_labels.float().permute(0, 2, 3, 1)  # (N, h, w, C)
        out = _propagate_global(q.reshape(h * w, d), s.reshape(n * h * w, d), labels.reshape(n * h * w, c),
                                topk, temperature)
        return out.T.reshape(c, h, w), False
    if prefilter is None:
        prefilter = bf16_matmul_is_fast(q.device)
    if prefilter:
        t = prefilter_tile(h, w, int(radius)) if tile is None else max(1, int(tile))
        out = _propagate_prefiltered(q, s, context_labels.float(), topk=topk, radius=int(radius),
                                     temperature=temperature, tile=t)
        if out is not None:
            return out, False

    t, r = (8 if tile is None else max(1, int(tile))), int(radius)
    big = t + 2 * r  # region side R
    n_ty, n_tx = -(-h // t), -(-w // t)
    hp, wp = n_ty * t + 2 * r, n_tx * t + 2 * r
    # Sources as (rows, contexts, columns, D), zero outside the frame: a tile's region in every context is then
    # the view (R * N, R, D) of rows y0.. and columns x0.., whatever N is.
    src = s.new_zeros(hp, n, wp, d)
    src[r:r + h, :, r:r + w] = s.permute(1, 0, 2, 3)
    lab = context_labels.new_zeros(hp, n, wp, c, dtype=torch.float32)  # (Hp, N, Wp, C)
    lab[r:r + h, :, r:r + w] = context_labels.float().permute(2, 0, 3, 1)
    # Dividing the queries by the temperature once replaces dividing every affinity.
    q_pad = F.pad(q / temperature, (0, 0, 0, n_tx * t - w, 0, n_ty * t - h))  # (n_ty*T, n_tx*T, D)
    queries = q_pad.reshape(n_ty, t, n_tx, t, d).permute(0, 2, 1, 3, 4).reshape(n_ty * n_tx, t * t, d)
    biases = _tile_biases(h, w, r, t, q.device)  # (tiles, T*T, R, 1, R)

    keep = min(topk + 1, n * big * big)
    logits = torch.empty(t * t, big, n, big, device=q.device)  # one tile's, reused
    top_vals = torch.empty(n_ty * n_tx, t * t, keep, device=q.device)
    top_flat = torch.empty(n_ty * n_tx, t * t, keep, dtype=torch.long, device=q.device)
    for ty in range(n_ty):
        for tx in range(n_tx):
            i = ty * n_tx + tx
            y0, x0 = ty * t, tx * t
            regions = src[y0:y0 + big, :, x0:x0 + big].reshape(big * n, big, d)  # a view: (R*N, R, D)
            prods = torch.bmm(queries[i].expand(big * n, -1, -1), regions.transpose(1, 2))  # (R*N, T*T, R)
            # Into (T*T, R, N, R) order with the window's -inf added, in one pass.
            torch.add(prods.view(big, n, t * t, big).permute(2, 0, 1, 3), biases[i], out=logits)
            vals, idx = torch.topk(logits.view(t * t, -1), keep, dim=-1)  # (T*T, k+1)
            top_vals[i] = vals
            # Region cell (u, context, v) -> its place in `lab` (row y0 + u, column x0 + v).
            u, rest = idx // (n * big), idx % (n * big)
            top_flat[i] = ((y0 + u) * n + rest // big) * wp + x0 + rest % big
    lab_flat = lab.reshape(-1, c)  # (Hp*N*Wp, C)
    out, tied = _top_k_average(top_vals, lab_flat[top_flat[..., :topk]], topk)  # (tiles, T*T, C), (tiles, T*T)
    out = out.view(n_ty, n_tx, t, t, c).permute(0, 2, 1, 3, 4).reshape(n_ty * t, n_tx * t, c)[:h, :w]
    # Tied queries (see _top_k_average) go through the reference's rule.
    tied = tied.view(n_ty, n_tx, t, t).permute(0, 2, 1, 3).reshape(n_ty * t, n_tx * t)[:h, :w]
    if tied.any():
        ys, xs = tied.nonzero(as_tuple=True)
        out[ys, xs] = _reference_rows(q[ys, xs], ys, xs, s, context_labels.float(), topk, r, temperature)
    return out.permute(2, 0, 1).contiguous(), bool(prefilter)  # (C, h, w)


def prefilter_tile(h: int, w: int, radius: int) -> int:
    """The query tile side that minimises the pre-pass's work on an h x w grid: tiles x (T^2 + 16) x (T + 2r)^2,
    the product's rows plus the region copy (worth about 16 rows) times the region. 6 for DAVIS at patch 16
    (30 x 52, r = 12): 20% less than 8 x 8 tiles, whose 32 x 32 regions exceed the 25 x 25 windows more."""
    def cost(t: int) -> int:
        return -(-h // t) * -(-w // t) * (t * t + 16) * (t + 2 * radius) ** 2
    return min(range(4, 11), key=cost)


@functools.lru_cache(maxsize=16)
def _tile_source_rows(n: int, h: int, w: int, radius: int, tile: int, device: torch.device) -> torch.Tensor:
    """(tiles, R*N*R) row in s.view(N*h*w, D) of each region cell (u, context, v) of each tile (row-major tiles,
    R = T + 2r). Cells outside the frame are clamped to a valid row: they are masked, their value never used."""
    t, r = tile, radius
    big = t + 2 * r
    n_ty, n_tx = -(-h // t), -(-w // t)
    u = torch.arange(big, device=device)
    ys = (torch.arange(n_ty, device=device)[:, None] * t + u - r).clamp(0, h - 1)  # (n_ty, R)
    xs = (torch.arange(n_tx, device=device)[:, None] * t + u - r).clamp(0, w - 1)  # (n_tx, R)
    ctx = torch.arange(n, device=device)
    rows = (ctx[None, None, None, :, None] * h + ys[:, None, :, None, None]) * w + xs[None, :, None, None, :]
    return rows.reshape(n_ty * n_tx, big * n * big)  # (n_ty, n_tx, R, N, R) flattened per tile


@functools.lru_cache(maxsize=16)
def _window_bias(n: int, radius: int, tile: int, masked: float, device: torch.device) -> torch.Tensor:
    """(T*T, R*N*R) bfloat16: 0 where region cell (u, context, v) is in the window of the tile's query (a, b),
    `masked` elsewhere; the same for every tile (R = T + 2r)."""
    t, big = tile, tile + 2 * radius
    near = _in_window(tile, radius, device)  # (T, R): query offset, cell offset
    ok = near[:, None, :, None, None] & near[None, :, None, None, :]  # (a, b, u, 1, v)
    bias = torch.zeros(ok.shape, device=device).masked_fill_(~ok, masked).expand(t, t, big, n, big)
    return bias.reshape(t * t, big * n * big).to(torch.bfloat16)


def _propagate_prefiltered(q: torch.Tensor, s: torch.Tensor, labels: torch.Tensor, *, topk: int, radius: int,
                           temperature: float, tile: int, candidates: int = _PREFILTER_CANDIDATES,
                           max_unsure: float = _PREFILTER_MAX_UNSURE) -> torch.Tensor | None:
    """`propagate_labels`'s windowed output (C, h, w) from a bfloat16 pre-pass and float32 candidates.

    q (h, w, D) and s (N, h, w, D) are unit vectors, labels (N, C, h, w). Per tile, one bfloat16 product of the
    queries with the (T + 2r)^2 region in every context picks each query's `candidates` largest approximate
    logits; only those are computed again in float32, in place of the whole float32 product. That is exact
    wherever the float32 (k+1)-th of the candidates exceeds a rigorous upper bound on every other source's true
    logit (the M-th approximate value plus the bfloat16 rounding of the inputs, of the output and of the float32
    accumulation): the top k + 1 are then among the candidates. The other queries, and ties, take the reference's
    rule (`_reference_rows`). Where more than `max_unsure` of the queries in the first eighth of the tiles are not
    settled, it returns None: bfloat16's 8 bits cannot rank these features (their top logits lie closer together
    than its rounding), and the caller is faster in float32.

    The product carries two more coordinates than the features. One subtracts c, the query's logit with the
    same position in the first context, so that the top logits come out near 0, where bfloat16 is finest; the
    other adds -BIG to sources outside the frame. The window's -BIG comes with the product (addmm): relative to
    its tile, it is the same for every tile.
    """
    n, h, w, d = s.shape
    c = labels.shape[1]
    t, r = tile, radius
    big = t + 2 * r  # region side R
    n_ty, n_tx = -(-h // t), -(-w // t)
    hp, wp = n_ty * t + 2 * r, n_tx * t + 2 * r
    k_shift, k_frame = d, d + 1  # the extra coordinates
    d2 = -(-(d + 2) // 8) * 8  # ... and zero padding to an aligned width
    # A power of two (exact in bfloat16) far below any logit - c, which lies within +-2 / temperature.
    masked = -(2.0 ** math.ceil(math.log2(64.0 / temperature)))
    qt = q / temperature  # (h, w, D)
    s = s.contiguous()
    # Sources in bfloat16 as (rows, contexts, columns, D2), zero outside the frame but for the frame flag.
    src = s.new_zeros(hp, n, wp, d2, dtype=torch.bfloat16)
    src[r:r + h, :, r:r + w, :d] = s.permute(1, 0, 2, 3)
    src[..., k_shift] = 1
    src[..., k_frame] = masked
    src[r:r + h, :, r:r + w, k_frame] = 0
    shift = torch.einsum("hwd,hwd->hw", qt, s[0]).to(torch.bfloat16)  # (h, w): c, representable in bfloat16
    q_b = q.new_zeros(n_ty * t, n_tx * t, d2, dtype=torch.bfloat16)
    q_b[:h, :w, :d] = qt
    q_b[:h, :w, k_shift] = -shift
    q_b[..., k_frame] = 1
    window = _window_bias(n, r, t, masked, q.device)  # (T*T, R*N*R) bfloat16
    # Upper bound, per query, on |approximate - true| logit before the output rounding (see the docstring):
    # |q_b - q| |s_b| + |q| |s_b - s| for the inputs, gamma for the float32 accumulation, with |s| = 1.
    q_norm = qt.norm(dim=-1)  # (h, w)
    s_b_norm = 1 + _BF16_INPUT_ROUNDING
    input_err = (qt - q_b[:h, :w, :d].float()).norm(dim=-1) * s_b_norm + q_norm * _BF16_INPUT_ROUNDING
    accum_err = _gamma(d2) * (q_norm * (1 + _BF16_INPUT_ROUNDING) * s_b_norm + shift.float().abs())
    # The float32 logits of the candidates are themselves within gamma(D) |q| of the true ones; 4x for margin.
    exact_err = 4 * _gamma(d) * q_norm
    err = (input_err + accum_err + exact_err) * (1 + 1e-5)

    def tiles(x: torch.Tensor) -> torch.Tensor:  # (n_ty*T, n_tx*T, X) -> (tiles, T*T, X), queries in tile order
        return x.reshape(n_ty, t, n_tx, t, -1).permute(0, 2, 1, 3, 4).reshape(n_ty * n_tx, t * t, -1)

    def untile(x: torch.Tensor) -> torch.Tensor:  # (tiles, T*T, X) -> (h*w, X)
        x = x.reshape(n_ty, n_tx, t, t, -1).permute(0, 2, 1, 3, 4).reshape(n_ty * t, n_tx * t, -1)
        return x[:h, :w].reshape(h * w, -1)

    def pad(x: torch.Tensor) -> torch.Tensor:  # (h, w, X) -> (n_ty*T, n_tx*T, X), zero beyond the frame
        return F.pad(x, (0, 0, 0, n_tx * t - w, 0, n_ty * t - h))

    queries_b = tiles(q_b)
    queries = tiles(pad(qt))
    # The part of each query's bound known before the pre-pass (see `bound` below); 0 for padding queries.
    pre_bound = tiles(pad((shift.float() + err)[..., None]))[..., 0]  # (tiles, T*T)
    real = tiles(pad(q.new_ones(h, w, 1)))[..., 0] > 0  # (tiles, T*T): queries inside the frame
    source_rows = _tile_source_rows(n, h, w, r, t, q.device)  # (tiles, R*N*R)
    m = min(max(candidates, topk + 1), n * big * big)
    keep = min(topk + 1, m)
    unsure = torch.empty(n_ty * n_tx, t * t, dtype=torch.bool, device=q.device)
    exact = q.new_empty(n_ty * n_tx, t * t, m)
    where = torch.empty(n_ty * n_tx, t * t, m, dtype=torch.long, device=q.device)
    s_rows = s.view(n * h * w, d)
    approx = q.new_empty(t * t, big * n * big, dtype=torch.bfloat16)
    region = src.new_empty(big, n, big, d2)
    for ty in range(n_ty):
        for tx in range(n_tx):
            i = ty * n_tx + tx
            region.copy_(src[ty * t:ty * t + big, :, tx * t:tx * t + big])
            # (T*T, R*N*R) bfloat16: logit - c, or far below outside the window or the frame.
            torch.addmm(window, queries_b[i], region.view(-1, d2).T, out=approx)
            vals, idx = torch.topk(approx, m, dim=-1, sorted=False)  # (T*T, M)
            vals = vals.float()
            vals.masked_fill_(vals < masked / 2, float("-inf"))
            rows = source_rows[i][idx]  # (T*T, M)
            cand = s_rows.index_select(0, rows.view(-1)).view(t * t, m, d)
            exact_i = (cand * queries[i][:, None]).sum(-1).masked_fill_(vals == float("-inf"), float("-inf"))
            exact[i] = exact_i
            where[i] = rows
            # Every source outside the candidates has a true logit at most `bound`; fewer than M sources in reach
            # (a -inf among the candidates) means every one of them is a candidate.
            approx_min = vals.amin(dim=-1)
            bound = pre_bound[i] + approx_min + _BF16_OUTPUT_ROUNDING * approx_min.abs() / (1 - _BF16_OUTPUT_ROUNDING)
            kth = torch.topk(exact_i, keep, dim=-1).values[:, -1]
            unsure[i] = ~((kth > bound) | (approx_min == float("-inf")))
        done = (ty + 1) * n_tx
        if max_unsure < 1 and done * 8 >= n_ty * n_tx:
            # Features too alike for bfloat16 to rank (typical of smooth frames through an untrained network):
            # the reference's rule per query would cost more than float32 throughout.
            if (unsure[:done] & real[:done]).sum() > max_unsure * real[:done].sum():
                return None
    exact, where, unsure = untile(exact), untile(where), untile(unsure)[:, 0]
    top_vals, order = torch.topk(exact, keep, dim=-1)  # (h*w, k+1)
    lab = labels.permute(0, 2, 3, 1).reshape(n * h * w, c)
    out, tied = _top_k_average(top_vals, lab[where.gather(1, order[:, :topk])], topk)  # (h*w, C)
    redo = (tied | unsure).view(h, w)
    if redo.any():
        ys, xs = redo.nonzero(as_tuple=True)
        out.view(h, w, c)[ys, xs] = _reference_rows(q[ys, xs], ys, xs, s, labels, topk, r, temperature)
    return out.T.reshape(c, h, w)


def _reference_rows(q: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, s: torch.Tensor, labels: torch.Tensor,
                    topk: int, radius: int, temperature: float) -> torch.Tensor:
    """The reference's rule for a few queries q (Q, D) at (ys, xs): exp affinities to every source of every
    context (N, h, w, D), zero outside the window, every source at or above the k-th value kept. (Q, C)."""
    n, h, w, d = s.shape
    aff = torch.exp(q @ s.reshape(-1, d).T / temperature).view(-1, n, h, w)  # (Q, N, h, w)
    gy, gx = torch.arange(h, device=q.device), torch.arange(w, device=q.device)
    near = ((gy[None, :, None] - ys[:, None, None]).abs() <= radius) & \
        ((gx[None, None, :] - xs[:, None, None]).abs() <= radius)  # (Q, h, w)
    aff = (aff * near[:, None]).reshape(len(q), -1)  # (Q, N*h*w)
    aff = _keep_topk(aff, topk)
    return aff @ labels.permute(0, 2, 3, 1).reshape(-1, labels.shape[1])  # (Q, C)


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
                   device: torch.device | str = "cpu", precision: str = "fp32") -> Iterator[torch.Tensor]:
    """Patch features (h, w, D) of each frame (3, H, W), the backbone run on batches of `bs` frames at
    `precision` (dino_seg.precision; the features come back as float32, so propagation stays fp32)."""
    if bs < 1:
        raise UserError(f"--bs: expected a positive batch size, got {bs}")
    batch: list[torch.Tensor] = []

    def run(items: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        with autocast(precision, device):
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
    # The bfloat16 pre-pass (propagate_labels) where it pays; once it gives up on a frame, the video's features
    # are too alike for it and the rest of the video stays in float32.
    prefilter: bool | None = None
    for feat in it:
        ctx_feats = torch.stack([first] + [f for f, _ in recent]) if n_last_frames else first[None]
        ctx_labels = torch.stack([first_labels] + [s for _, s in recent]) if n_last_frames else first_labels[None]
        soft, gave_up = _propagate_labels(ctx_feats, ctx_labels, feat, topk=topk, radius=radius,
                                          temperature=temperature, tile=None, prefilter=prefilter)
        if gave_up:
            prefilter = False
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
    precision: str = "fp32",
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

    # Frames are decoded by a thread up to two batches ahead, while the backbone and propagation run.
    feats = frame_features(model, prefetched(read_all(), depth=2 * bs), bs=bs, device=device, precision=precision)
    softs = propagate_sequence(feats, labels, n_last_frames=n_last_frames, topk=topk, radius=radius,
                               temperature=temperature)
    for idx, soft in enumerate(softs, start=1):
        yield idx, soft_to_mask(soft, patch_size, sizes[idx])
