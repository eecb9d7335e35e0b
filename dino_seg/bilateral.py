"""TokenCut's saliency refinement: Barron & Poole's fast bilateral solver as get_saliency.py runs it.

OpenCV contrib has this solver (ximgproc.createFastBilateralSolverFilter) only when built with Eigen, which
the PyPI wheels are not: it is written here on scipy's sparse matrices and conjugate gradients, as
TokenCut's bilateral_solver.py does, with the same grid (coordinates truncated, a [1 2 1] blur per dimension),
bistochastisation, λ, Jacobi preconditioner and CG settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg

from .masks import mask_iou

# get_saliency.py's defaults (its bilateral_solver_output defaults, 24 / 4 / 4, are overridden by these flags).
SIGMA_SPATIAL, SIGMA_LUMA, SIGMA_CHROMA = 16.0, 16.0, 8.0
# bilateral_solver_output's bs_params: smoothness λ, Jacobi diagonal clamp, CG tolerance and iterations.
LAMBDA, DIAG_MIN, CG_TOL, CG_MAXITER = 256.0, 1e-5, 1e-5, 25
CONFIDENCE = 0.999  # the same everywhere
BISTOCHASTIC_ITERATIONS = 10
MIN_IOU = 0.5  # get_saliency.py marks a refinement whose IoU with the coarse mask is under this
# Above this many pixels the grid is built on a downscaled copy (per-pixel sparse matrices and sorts dominate the
# memory: benchmarks/refine_memory.py); the soft output is brought back by bilinear interpolation.
MAX_GRID_PIXELS = 1_500_000
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YUV_OFFSET = np.array([0.0, 128.0, 128.0])


class BilateralGrid:
    """Pixels of an RGB image splatted onto the vertices of a 5-D (x, y, luma, u, v) grid.

    Vertex coordinates are the pixel's values divided by the sigmas and truncated (TokenCut's astype(int); all
    are non-negative). TokenCut hashes them in base 255, which aliases once a scaled coordinate reaches 255
    (images wider than 4,080 pixels) or at -1 offsets; here each dimension gets its own radix, so no two vertices
    share a key: the same grid wherever TokenCut's hash is exact.
    """

    dim = 5

    def __init__(self, image: np.ndarray, sigma_spatial: float = SIGMA_SPATIAL, sigma_luma: float = SIGMA_LUMA,
                 sigma_chroma: float = SIGMA_CHROMA) -> None:
        h, w = image.shape[:2]
        yuv = image.reshape(-1, 3).astype(np.float64) @ RGB_TO_YUV.T + YUV_OFFSET  # (P, 3)
        yy, xx = np.mgrid[:h, :w]
        coords = np.empty((h * w, self.dim), dtype=np.int64)  # (P, 5): x, y, luma, u, v
        coords[:, 0] = (xx.ravel() / sigma_spatial).astype(np.int64)
        coords[:, 1] = (yy.ravel() / sigma_spatial).astype(np.int64)
        del xx, yy
        coords[:, 2] = (yuv[:, 0] / sigma_luma).astype(np.int64)
        coords[:, 3:] = (yuv[:, 1:] / sigma_chroma).astype(np.int64)
        del yuv
        coords += 1  # so a -1 neighbour offset stays non-negative and cannot alias another vertex
        radix = coords.max(axis=0) + 2
        self.weights = np.cumprod(np.concatenate([[1], radix[:-1]]))  # (5,) mixed-radix key weights
        keys, index = np.unique(coords @ self.weights, return_inverse=True)  # sorted vertex keys, vertex per pixel
        del coords
        self.npixels, self.nvertices = h * w, len(keys)
        self.S = scipy.sparse.csr_matrix((np.ones(self.npixels), (index.ravel(), np.arange(self.npixels))),
                                         shape=(self.nvertices, self.npixels))  # (V, P) splat
        # [1 0 1] blurs along each dimension (the central 2 * dim is added in `blur`), summed: TokenCut's blurs.
        blur = scipy.sparse.csr_matrix((self.nvertices, self.nvertices))
        for d in range(self.dim):
            for offset in (-1, 1):
                neighbour = keys + offset * self.weights[d]
                locs = np.clip(np.searchsorted(keys, neighbour), 0, len(keys) - 1)
                valid = np.flatnonzero(keys[locs] == neighbour)
                blur = blur + scipy.sparse.csr_matrix((np.ones(len(valid)), (valid, locs[valid])),
                                                      shape=(self.nvertices, self.nvertices))
        self.neighbours = blur  # (V, V)

    def splat(self, x: np.ndarray) -> np.ndarray:
        return self.S @ x

    def slice(self, y: np.ndarray) -> np.ndarray:
        return self.S.T @ y

    def blur(self, x):
        """[1 2 1] blur in each dimension: 2 * dim times the vertex plus its grid neighbours (vector or matrix)."""
        return 2 * self.dim * x + self.neighbours @ x


def bistochastize(grid: BilateralGrid, maxiter: int = BISTOCHASTIC_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Diagonals (n, m) making the blurred grid bistochastic (the paper's normalisation), as TokenCut computes them."""
    m = grid.splat(np.ones(grid.npixels))
    n = np.ones(grid.nvertices)
    for _ in range(maxiter):
        n = np.sqrt(n * m / grid.blur(n))
    return n, n * grid.blur(n)  # m corrected so the assumption holds whatever the iteration count


def bilateral_solve(image: np.ndarray, target: np.ndarray, confidence: float = CONFIDENCE,
                    sigma_spatial: float = SIGMA_SPATIAL, sigma_luma: float = SIGMA_LUMA,
                    sigma_chroma: float = SIGMA_CHROMA) -> np.ndarray:
    """Edge-aware smoothing of a target (H, W) guided by an RGB image (H, W, 3): the solver's soft output (H, W)
    float64."""
    h, w = target.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"guide image of {image.shape[1]}x{image.shape[0]}, target of {w}x{h}")
    grid = BilateralGrid(image, sigma_spatial, sigma_luma, sigma_chroma)
    n, m = bistochastize(grid)
    dn = scipy.sparse.diags(n)
    a_smooth = scipy.sparse.diags(m) - dn @ grid.blur(dn)  # (V, V)
    x = target.reshape(-1).astype(np.float64)
    c = np.full(grid.npixels, confidence)
    c_splat = grid.splat(c)
    a = LAMBDA * a_smooth + scipy.sparse.diags(c_splat)
    b = grid.splat(x * c)
    precondition = scipy.sparse.diags(1 / np.maximum(a.diagonal(), DIAG_MIN))
    y, _ = scipy.sparse.linalg.cg(a, b, x0=b / c_splat, M=precondition, maxiter=CG_MAXITER, rtol=CG_TOL)
    return grid.slice(y).reshape(h, w)


def solve_scaled(image: np.ndarray, target: np.ndarray, max_pixels: int | None = MAX_GRID_PIXELS,
                 sigma_spatial: float = SIGMA_SPATIAL, sigma_luma: float = SIGMA_LUMA,
                 sigma_chroma: float = SIGMA_CHROMA) -> np.ndarray:
    """`bilateral_solve`, on a copy downscaled to at most `max_pixels` when the image is larger (None: never).

    The spatial sigma shrinks with the image so the grid keeps its extent in original pixels; the soft output
    comes back to (H, W) by bilinear interpolation. Below the cap this is exactly `bilateral_solve`.
    """
    h, w = target.shape
    if max_pixels is None or h * w <= max_pixels:
        return bilateral_solve(image, target, sigma_spatial=sigma_spatial, sigma_luma=sigma_luma,
                               sigma_chroma=sigma_chroma)
    s = math.sqrt(max_pixels / (h * w))
    sw, sh = max(1, int(w * s)), max(1, int(h * s))
    small = cv2.resize(np.ascontiguousarray(image), (sw, sh), interpolation=cv2.INTER_AREA)
    small_target = cv2.resize(np.asarray(target, dtype=np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
    soft = bilateral_solve(small, small_target, sigma_spatial=sigma_spatial * sw / w, sigma_luma=sigma_luma,
                           sigma_chroma=sigma_chroma)
    return cv2.resize(soft.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (H, W); empty stays empty.

    TokenCut takes `labeled == argsort(sizes)[-2]` with the background among the sizes: the largest object
    only while the background outnumbers it (an object covering most of the image would give the background);
    here it is always the largest object.
    """
    labels, count = scipy.ndimage.label(binary)
    if count == 0:
        return np.zeros_like(binary, dtype=bool)
    return labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)


@dataclass
class Refinement:
    """One mask refined by the solver."""

    soft: np.ndarray  # (H, W) float64, the solver's output (what get_saliency.py scores)
    mask: np.ndarray  # (H, W) bool: > 0.5, holes filled, largest component
    iou: float  # IoU of `mask` with the coarse mask
    accepted: bool  # iou >= 0.5; get_saliency.py marks the others (binary * -1: drawn as no mask)


def bilateral_solver_output(image: np.ndarray, coarse: np.ndarray, max_pixels: int | None = MAX_GRID_PIXELS,
                            sigma_spatial: float = SIGMA_SPATIAL, sigma_luma: float = SIGMA_LUMA,
                            sigma_chroma: float = SIGMA_CHROMA) -> Refinement:
    """TokenCut's bilateral_solver_output plus get_saliency.py's IoU check, for one coarse mask (H, W)."""
    coarse = np.asarray(coarse) > 0.5
    soft = solve_scaled(image, coarse, max_pixels, sigma_spatial, sigma_luma, sigma_chroma)
    mask = largest_component(scipy.ndimage.binary_fill_holes(soft > 0.5))
    iou = mask_iou(mask, coarse)
    return Refinement(soft, mask, iou, iou >= MIN_IOU)
