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

from .ncut import CosineGraph

MAX_NCUT = 0.5
AUTO_MAX_OBJECTS = 10


def ncut_value(graph: CosineGraph, mask: np.ndarray, removed: np.ndarray | None = None) -> float:
    """Ncut of `mask` (N,) bool against the rest of the graph's patches, without the `removed` (N,) ones.

    1 (no better than chance) when the mask or the rest is empty."""
    keep = np.ones(graph.n, dtype=bool) if removed is None else ~np.asarray(removed, dtype=bool)
    inside = np.asarray(mask, dtype=bool) & keep
    rest = keep & ~inside
    if not inside.any() or not rest.any():
        return 1.0
    u = np.stack([inside, rest], axis=1).astype(np.float64)  # (N, 2) indicators, 0 on removed patches
    au = graph.matmat(u, None if removed is None else keep.astype(np.float64))  # (N, 2)
    cut = float(u[:, 0] @ au[:, 1])
    assoc_in = cut + float(u[:, 0] @ au[:, 0])
    assoc_rest = cut + float(u[:, 1] @ au[:, 1])
    return cut / assoc_in + cut / assoc_rest


def score_from_ncut(ncut: float) -> float:
    return float(min(1.0, max(0.0, 1.0 - ncut)))


def object_ncuts(feats: torch.Tensor, patches: np.ndarray, tau: float, eps: float = 1e-5,
                 sequential: bool = False) -> list[float]:
    """Ncut of each object's patches (objects, h, w) on TokenCut's graph of the features (N, D).

    `sequential`: as MaskCut found them, each on the graph without the earlier objects' patches."""
    if len(patches) == 0:
        return []
    graph = CosineGraph(feats, tau, eps)
    removed = np.zeros(graph.n, dtype=bool)
    values = []
    for mask in np.asarray(patches, dtype=bool).reshape(len(patches), -1):
        values.append(ncut_value(graph, mask, removed if sequential and removed.any() else None))
        if sequential:
            removed |= mask
    return values


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
