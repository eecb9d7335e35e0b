"""How confident a discovered object is, and MaskCut's automatic object count.

An object's confidence is read off TokenCut's own graph (cosine of the features > tau, eps elsewhere): the
normalised-cut value of splitting the object's patches from the rest,
    Ncut(M, R) = cut(M, R) / assoc(M, V) + cut(M, R) / assoc(R, V),
with V the patches still in the graph (MaskCut removes earlier objects) and R = V minus M. It is 0 for an object
joined to nothing outside it and 1 for any split of a featureless graph (every edge alike: cut / assoc is then
the other side's share, and the shares add up to 1), so the score is 1 - Ncut, clipped to [0, 1].

`--n_objects auto` stops MaskCut at the first cut whose Ncut exceeds MAX_NCUT (score under 0.5): that cut
costs at least half of what splitting a featureless graph would, so it is no longer an object. An image whose
first cut already fails has no object. MaskCut's object k depends only on objects 0..k-1, so cutting up to
AUTO_MAX_OBJECTS and keeping the leading confident objects is the same as stopping there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


MAX_NCUT = 0.5
AUTO_MAX_OBJECTS = 10
_CHUNK_ROWS = 1024


def affinity_product(feats: torch.Tensor, u: np.ndarray, tau: float, eps: float = 1e-5) -> np.ndarray:
    """A @ u for TokenCut's graph A = eps + (1 - eps) [cos > tau] of the features (N, D), u (N, m): (N, m).

    One pass over A's rows in chunks (float32 cosines, as ncut.CosineGraph), never N x N and without the sparse
    copy of the graph, which would cost as much as the cut itself."""
    f = F.normalize(feats.float(), p=2, dim=-1)  # (N, D)
    ut = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32))
    b_u = torch.cat([((f[i:i + _CHUNK_ROWS] @ f.T) > tau).float() @ ut for i in range(0, len(f), _CHUNK_ROWS)])
    return eps * u.sum(axis=0, keepdims=True) + (1 - eps) * b_u.double().numpy()


def ncut_values(feats: torch.Tensor, masks: np.ndarray, removed: np.ndarray | None, tau: float,
                eps: float = 1e-5) -> list[float]:
    """Ncut of each mask (k, N) bool against the rest of the patches, without its `removed` (k, N) ones.

    1 (no better than chance) where the mask or the rest is empty. All masks share one pass over the graph:
    removed patches need no change to A, since both indicators are zero on them."""
    masks = np.asarray(masks, dtype=bool)
    keep = np.ones_like(masks) if removed is None else ~np.asarray(removed, dtype=bool)
    inside, rest = masks & keep, keep & ~masks
    u = np.concatenate([inside, rest]).T.astype(np.float64)  # (N, 2k): every object's two indicators
    au = affinity_product(feats, u, tau, eps)
    k = len(masks)
    values = []
    for i in range(k):
        if not inside[i].any() or not rest[i].any():
            values.append(1.0)
            continue
        cut = float(u[:, i] @ au[:, k + i])
        assoc_in = cut + float(u[:, i] @ au[:, i])
        assoc_rest = cut + float(u[:, k + i] @ au[:, k + i])
        values.append(cut / assoc_in + cut / assoc_rest)
    return values


def score_from_ncut(ncut: float) -> float:
    return float(min(1.0, max(0.0, 1.0 - ncut)))


def object_ncuts(feats: torch.Tensor, patches: np.ndarray, tau: float, eps: float = 1e-5,
                 sequential: bool = False) -> list[float]:
    """Ncut of each object's patches (objects, h, w) on TokenCut's graph of the features (N, D).

    `sequential`: as MaskCut found them, each on the graph without the earlier objects' patches."""
    if len(patches) == 0:
        return []
    masks = np.asarray(patches, dtype=bool).reshape(len(patches), -1)
    removed = None
    if sequential:  # object i without objects 0..i-1
        removed = np.zeros_like(masks)
        removed[1:] = np.logical_or.accumulate(masks, axis=0)[:-1]
    return ncut_values(feats, masks, removed, tau, eps)


@dataclass
class AutoCount:
    """The outcome of `--n_objects auto`."""

    kept: int  # leading objects whose Ncut is at most MAX_NCUT
    ncuts: list[float]  # of every object MaskCut found, in order
    stop_ncut: float | None  # the Ncut of the first object refused (None: none was)

    @property
    def stop_score(self) -> float | None:
        return None if self.stop_ncut is None else score_from_ncut(self.stop_ncut)


def auto_count(ncuts: list[float], max_ncut: float = MAX_NCUT) -> AutoCount:
    """How many leading objects are confident: cutting stops at the first Ncut over `max_ncut`."""
    for i, value in enumerate(ncuts):
        if value > max_ncut:
            return AutoCount(i, list(ncuts), value)
    return AutoCount(len(ncuts), list(ncuts), None)
