"""Pixel-accurate object masks: TokenCut's bilateral-solver refinement (Barron & Poole's fast bilateral solver).

OpenCV contrib has this solver (ximgproc.createFastBilateralSolverFilter) but only when built with
Eigen, which the PyPI wheels are not ("needs to be compiled with EIGEN"): it is written here on scipy's
sparse matrices and conjugate gradients, as TokenCut's own bilateral_solver.py does.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg

from .masks import mask_iou

# TokenCut's saliency refinement: sigma spatial 16, luma 16, chroma 8; its solver's lambda 256,
# 25 preconditioned conjugate-gradient iterations, tolerance 1e-5; confidence 0.999 everywhere.
SIGMA_SPATIAL, SIGMA_LUMA, SIGMA_CHROMA = 16.0, 16.0, 8.0
LAMBDA, ITERATIONS, TOLERANCE, DIAG_MIN = 256.0, 25, 1e-5, 1e-5
_RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YUV_OFFSET = np.array([0.0, 128.0, 128.0])


class BilateralGrid:
    """Pixels splatted onto the vertices of a 5-D (x, y, luma, u, v) grid, with the grid's neighbour blur."""

    def __init__(self, image: np.ndarray, sigma_spatial: float = SIGMA_SPATIAL, sigma_luma: float = SIGMA_LUMA,
                 sigma_chroma: float = SIGMA_CHROMA) -> None:
        h, w = image.shape[:2]
        yuv = image.reshape(-1, 3).astype(np.float64) @ _RGB_TO_YUV.T + _YUV_OFFSET  # (P, 3)
        yy, xx = np.mgrid[:h, :w]
        coords = np.column_stack([xx.ravel() / sigma_spatial, yy.ravel() / sigma_spatial, yuv[:, 0] / sigma_luma,
                                  yuv[:, 1] / sigma_chroma, yuv[:, 2] / sigma_chroma])
        coords = np.rint(coords).astype(np.int64) + 1  # >= 1, so neighbours at -1 stay non-negative
        radix = coords.max(axis=0) + 2
        weights = np.cumprod(np.concatenate([[1], radix[:-1]]))
        keys, index = np.unique(coords @ weights, return_inverse=True)  # vertex per pixel
        self.vertices = len(keys)
        self.pixels = h * w
        self.splat_matrix = scipy.sparse.csr_matrix(
            (np.ones(self.pixels), (index.ravel(), np.arange(self.pixels))), shape=(self.vertices, self.pixels))
        self.blurs = []
        for d in range(5):
            for offset in (-1, 1):
                neighbour = keys + offset * weights[d]
                pos = np.clip(np.searchsorted(keys, neighbour), 0, len(keys) - 1)
                found = keys[pos] == neighbour
                self.blurs.append(scipy.sparse.csr_matrix(
                    (np.ones(found.sum()), (np.flatnonzero(found), pos[found])), shape=(self.vertices, self.vertices)))

    def splat(self, x: np.ndarray) -> np.ndarray:
        return self.splat_matrix @ x

    def slice(self, y: np.ndarray) -> np.ndarray:
        return self.splat_matrix.T @ y

    def blur(self, y: np.ndarray) -> np.ndarray:
        return 10 * y + sum(b @ y for b in self.blurs)  # each vertex twice per dimension, plus its neighbours


def bilateral_solve(image: np.ndarray, target: np.ndarray, confidence: float = 0.999) -> np.ndarray:
    """Edge-aware smoothing of a target map (H, W), guided by an RGB image (H, W, 3 uint8): (H, W) float64."""
    grid = BilateralGrid(image)
    # Bistochastise the blur so the smoothness term has a flat response (the paper's normalisation).
    m = grid.splat(np.ones(grid.pixels))
    n = np.ones(grid.vertices)
    for _ in range(10):
        n = np.sqrt(n * m / grid.blur(n))
    m = n * grid.blur(n)
    blur = scipy.sparse.identity(grid.vertices) * 10 + sum(grid.blurs)
    a_smooth = scipy.sparse.diags(m) - scipy.sparse.diags(n) @ blur @ scipy.sparse.diags(n)
    x = target.reshape(-1).astype(np.float64)
    c = np.full(grid.pixels, confidence)
    c_splat = grid.splat(c)
    a = LAMBDA * a_smooth + scipy.sparse.diags(c_splat)
    b = grid.splat(x * c)
    precondition = scipy.sparse.diags(1 / np.maximum(a.diagonal(), DIAG_MIN))
    y, _ = scipy.sparse.linalg.cg(a, b, x0=b / c_splat, M=precondition, maxiter=ITERATIONS, rtol=TOLERANCE)
    return grid.slice(y).reshape(target.shape)


def refine_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """TokenCut's rule: solve, threshold at 0.5, fill holes, keep the largest component (H, W) bool.

    Where TokenCut flags a refinement that disagrees with the coarse mask (IoU < 0.5), the coarse mask
    is kept; an empty refinement keeps it too (TokenCut would return the whole image).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    binary = scipy.ndimage.binary_fill_holes(bilateral_solve(image, mask) > 0.5)
    labels, count = scipy.ndimage.label(binary)
    if count == 0:
        return mask
    refined = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    return refined if mask_iou(refined, mask) >= 0.5 else mask


def refine_masks(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`refine_mask` for each object mask (objects, H, W) of one image."""
    return np.stack([refine_mask(image, m) for m in masks]) if len(masks) else np.asarray(masks, dtype=bool)
