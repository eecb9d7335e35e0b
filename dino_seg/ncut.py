"""Normalised cut of a thresholded cosine graph: the second-smallest generalised eigenvector, dense or iterative."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

SOLVERS = ("auto", "dense", "iterative")
# Below this many patches scipy's dense generalised eigh is as fast as the iterative solve
# (benchmarks/discover.py); above it the dense O(N^3) solve dominates the backbone's time.
DENSE_MAX_PATCHES = 500
_CHUNK_ROWS = 1024


def cosine_graph_dense(feats: torch.Tensor, tau: float, eps: float) -> np.ndarray:
    """TokenCut's affinity: 1 where the cosine similarity exceeds tau, eps elsewhere: (N, N) float64.

    Zero feature rows (MaskCut's removed patches) have cosine 0 with everything, hence eps.
    """
    f = F.normalize(feats.double(), p=2, dim=-1)  # (N, D)
    return np.where((f @ f.T).numpy() > tau, 1.0, eps)


def second_eigenvector_dense(feats: torch.Tensor, tau: float, eps: float) -> np.ndarray:
    """The reference's solve: scipy eigh of (D - A) x = lambda D x, second-smallest vector (N,), x^T D x = 1."""
    a = cosine_graph_dense(feats, tau, eps)
    d = np.diag(a.sum(axis=1))
    _, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
    return vecs[:, 0]


class _Graph:
    """The eps-filled graph as rank one plus a sparse 0/1 part: A = eps 11^T + (1 - eps) B, where B (or,
    when B is mostly ones, its complement C = 11^T - B, so A = 11^T - (1 - eps) C) is stored in CSR."""

    def __init__(self, feats: torch.Tensor, tau: float, eps: float) -> None:
        f = F.normalize(feats.float(), p=2, dim=-1)  # (N, D)
        n = f.shape[0]
        counts = torch.zeros(n, dtype=torch.int64)
        for i in range(0, n, _CHUNK_ROWS):
            counts[i:i + _CHUNK_ROWS] = ((f[i:i + _CHUNK_ROWS] @ f.T) > tau).sum(dim=1)
        self.complement = bool(counts.sum() > n * n // 2)  # store whichever side is sparser
        indptr = np.zeros(n + 1, dtype=np.int64)
        indptr[1:] = np.cumsum((n - counts).numpy() if self.complement else counts.numpy())
        indices = np.empty(int(indptr[-1]), dtype=np.int32)
        for i in range(0, n, _CHUNK_ROWS):
            above = (f[i:i + _CHUNK_ROWS] @ f.T) > tau  # (chunk, N)
            cols = torch.nonzero(~above if self.complement else above)[:, 1]
            indices[indptr[i]:indptr[min(i + _CHUNK_ROWS, n)]] = cols.numpy()
        data = np.ones(len(indices), dtype=np.float32)
        self.sparse = scipy.sparse.csr_matrix((data, indices, indptr), shape=(n, n))
        self.n, self.eps = n, eps
        # Row sums of A: the degrees.
        b_rows = counts.double().numpy()
        self.degree = eps * n + (1 - eps) * b_rows

    def matmat(self, u: np.ndarray) -> np.ndarray:
        """A @ u for u (N, k)."""
        ones = u.sum(axis=0, keepdims=True)  # (1, k)
        if self.complement:
            return ones - (1 - self.eps) * (self.sparse @ u)
        return self.eps * ones + (1 - self.eps) * (self.sparse @ u)


def second_eigenvector_iterative(feats: torch.Tensor, tau: float, eps: float, tol: float = 1e-8) -> np.ndarray:
    """Same vector as `second_eigenvector_dense`, by Lanczos on the normalised graph, never forming A densely.

    With S = D^-1/2 A D^-1/2, (D - A) x = lambda D x  <=>  S y = (1 - lambda) y, x = D^-1/2 y. S's top
    eigenvector is sqrt(d) (eigenvalue 1) exactly; it is deflated so the largest one left is the wanted one.
    """
    graph = _Graph(feats, tau, eps)
    n = graph.n
    inv_sqrt = 1.0 / np.sqrt(graph.degree)
    top = np.sqrt(graph.degree)
    top /= np.linalg.norm(top)

    def matmat(v: np.ndarray) -> np.ndarray:
        v = v.reshape(n, -1)
        out = inv_sqrt[:, None] * graph.matmat(inv_sqrt[:, None] * v)
        return out - top[:, None] * (top @ v)[None, :]

    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    v0 -= top * (top @ v0)
    _, vecs = scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=v0, tol=tol)
    x = inv_sqrt * vecs[:, 0]
    return x / np.sqrt(x @ (graph.degree * x))  # eigh's normalisation x^T D x = 1


def second_eigenvector(feats: torch.Tensor, tau: float, eps: float = 1e-5, solver: str = "auto") -> np.ndarray:
    """Second-smallest generalised eigenvector of TokenCut's graph on features (N, D): (N,) float64.

    Its sign is arbitrary, as scipy's; callers orient it.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {', '.join(SOLVERS)}, got {solver!r}")
    if feats.shape[0] < 3:
        raise ValueError(f"a normalised cut needs at least 3 patches, got {feats.shape[0]}")
    if solver == "dense" or (solver == "auto" and feats.shape[0] <= DENSE_MAX_PATCHES):
        return second_eigenvector_dense(feats, tau, eps)
    return second_eigenvector_iterative(feats, tau, eps)
