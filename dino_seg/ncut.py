"""Normalised cut of a thresholded cosine graph: the second-smallest generalised eigenvector, dense or iterative."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

SOLVERS = ("auto", "dense", "iterative")
# Up to this many patches the references' dense generalised eigh is kept; above it the iterative solve is faster
# (measured on a shared 2-core CPU; at 1,200 patches the dense solve costs more than the ViT-S/16 backbone).
DENSE_MAX_PATCHES = 100
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


class CosineGraph:
    """TokenCut's eps-filled graph as rank one plus a sparse 0/1 part, never dense: A = eps 11^T + (1 - eps) B
    with B = [cos > tau] stored in CSR, or, when B is mostly ones, its complement C = 11^T - B (then
    A = 11^T - (1 - eps) C). MaskCut's removed patches (`keep` false) lose all their B entries, as zeroed
    features do in CutLER: with k = keep, B becomes diag(k) B diag(k), still low rank plus sparse."""

    def __init__(self, feats: torch.Tensor, tau: float, eps: float) -> None:
        f = F.normalize(feats.float(), p=2, dim=-1)  # (N, D)
        n = f.shape[0]
        probe = f[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:256]]
        self.complement = bool(((probe @ f.T) > tau).float().mean() > 0.5)  # store whichever side is sparser
        indices, counts = [], []
        for i in range(0, n, _CHUNK_ROWS):
            above = (f[i:i + _CHUNK_ROWS] @ f.T) > tau  # (chunk, N)
            nz = torch.nonzero(~above if self.complement else above)  # row-major: CSR order
            indices.append(nz[:, 1].to(torch.int32).numpy())
            counts.append(torch.bincount(nz[:, 0], minlength=above.shape[0]).numpy())
        indptr = np.zeros(n + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(np.concatenate(counts))
        index = np.concatenate(indices)
        self.sparse = scipy.sparse.csr_matrix((np.ones(len(index), dtype=np.float32), index, indptr), shape=(n, n))
        self.n, self.eps = n, eps

    def _b(self, u: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
        # B @ u (N, k) with removed rows and columns of B zeroed; float32 products (scipy would upcast the matrix).
        if keep is not None:
            u = u * keep[:, None]
        su = (self.sparse @ u.astype(np.float32)).astype(np.float64)
        out = (u.sum(axis=0, keepdims=True) - su) if self.complement else su
        return out if keep is None else out * keep[:, None]

    def matmat(self, u: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """A @ u for u (N, k)."""
        return self.eps * u.sum(axis=0, keepdims=True) + (1 - self.eps) * self._b(u, keep)

    def degree(self, keep: np.ndarray | None = None) -> np.ndarray:
        """Row sums of A: (N,)."""
        return self.matmat(np.ones((self.n, 1)), keep)[:, 0]


def second_eigenvector_iterative(feats: torch.Tensor | CosineGraph, tau: float, eps: float,
                                 keep: np.ndarray | None = None, tol: float = 1e-6) -> np.ndarray:
    """Same vector as `second_eigenvector_dense`, by Lanczos on the normalised graph, never forming A densely.

    With S = D^-1/2 A D^-1/2, (D - A) x = lambda D x  <=>  S y = (1 - lambda) y, x = D^-1/2 y. S's top
    eigenvector is sqrt(d) (eigenvalue 1) exactly; it is deflated so the largest one left is the wanted one.
    """
    graph = feats if isinstance(feats, CosineGraph) else CosineGraph(feats, tau, eps)
    n = graph.n
    keep = None if keep is None else np.asarray(keep, dtype=np.float64)
    degree = graph.degree(keep)
    inv_sqrt = 1.0 / np.sqrt(degree)
    top = np.sqrt(degree)
    top /= np.linalg.norm(top)

    def matmat(v: np.ndarray) -> np.ndarray:
        v = v.reshape(n, -1)
        out = inv_sqrt[:, None] * graph.matmat(inv_sqrt[:, None] * v, keep)
        return out - top[:, None] * (top @ v)[None, :]

    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=matmat, matmat=matmat, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(n)
    v0 -= top * (top @ v0)
    _, vecs = scipy.sparse.linalg.eigsh(op, k=1, which="LA", v0=v0, tol=tol)
    x = inv_sqrt * vecs[:, 0]
    return x / np.sqrt(x @ (degree * x))  # eigh's normalisation x^T D x = 1


class NormalisedCut:
    """Second-smallest generalised eigenvectors of TokenCut's graph on features (N, D), for the whole graph
    or with patches removed (MaskCut); the iterative path builds the sparse graph once for all cuts."""

    def __init__(self, feats: torch.Tensor, tau: float, eps: float = 1e-5, solver: str = "auto") -> None:
        if solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(SOLVERS)}, got {solver!r}")
        if feats.shape[0] < 3:
            raise ValueError(f"a normalised cut needs at least 3 patches, got {feats.shape[0]}")
        self.feats, self.tau, self.eps = feats, tau, eps
        self.dense = solver == "dense" or (solver == "auto" and feats.shape[0] <= DENSE_MAX_PATCHES)
        self._graph: CosineGraph | None = None

    def second_eigenvector(self, removed: np.ndarray | None = None) -> np.ndarray:
        """(N,) float64, x^T D x = 1, sign arbitrary (as scipy's); `removed` (N,) bool patches get eps affinities."""
        if self.dense:
            feats = self.feats
            if removed is not None and removed.any():
                feats = feats.clone()
                feats[torch.from_numpy(removed)] = 0  # CutLER zeroes the features of found objects
            return second_eigenvector_dense(feats, self.tau, self.eps)
        if self._graph is None:
            self._graph = CosineGraph(self.feats, self.tau, self.eps)
        keep = None if removed is None or not removed.any() else ~removed
        return second_eigenvector_iterative(self._graph, self.tau, self.eps, keep)


def second_eigenvector(feats: torch.Tensor, tau: float, eps: float = 1e-5, solver: str = "auto") -> np.ndarray:
    """Second-smallest generalised eigenvector of TokenCut's graph on features (N, D): (N,) float64.

    Its sign is arbitrary, as scipy's; callers orient it.
    """
    return NormalisedCut(feats, tau, eps, solver).second_eigenvector()
