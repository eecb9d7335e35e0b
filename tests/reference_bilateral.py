"""Plain transcription of TokenCut's unsupervised_saliency_detection/bilateral_solver.py (MIT), for tests only."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix, diags
from scipy.sparse.linalg import cg

RGB_TO_YUV = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YUV_OFFSET = np.array([0, 128.0, 128.0]).reshape(1, 1, -1)
MAX_VAL = 255.0


def rgb2yuv(im):
    return np.tensordot(im, RGB_TO_YUV, ([2], [1])) + YUV_OFFSET


def get_valid_idx(valid, candidates):
    locs = np.searchsorted(valid, candidates)
    locs = np.clip(locs, 0, len(valid) - 1)
    valid_idx = np.flatnonzero(valid[locs] == candidates)
    return valid_idx, locs[valid_idx]


class BilateralGrid:
    def __init__(self, im, sigma_spatial=32, sigma_luma=8, sigma_chroma=8):
        im_yuv = rgb2yuv(im)
        iy, ix = np.mgrid[:im.shape[0], :im.shape[1]]
        x_coords = (ix / sigma_spatial).astype(int)
        y_coords = (iy / sigma_spatial).astype(int)
        luma_coords = (im_yuv[..., 0] / sigma_luma).astype(int)
        chroma_coords = (im_yuv[..., 1:] / sigma_chroma).astype(int)
        coords = np.dstack((x_coords, y_coords, luma_coords, chroma_coords))
        coords_flat = coords.reshape(-1, coords.shape[-1])
        self.npixels, self.dim = coords_flat.shape
        self.hash_vec = MAX_VAL ** np.arange(self.dim)
        hashed = self._hash(coords_flat)
        unique_hashes, unique_idx, idx = np.unique(hashed, return_index=True, return_inverse=True)
        unique_coords = coords_flat[unique_idx]
        self.nvertices = len(unique_coords)
        self.S = csr_matrix((np.ones(self.npixels), (idx, np.arange(self.npixels))))
        self.blurs = []
        for d in range(self.dim):
            blur = 0.0
            for offset in (-1, 1):
                offset_vec = np.zeros((1, self.dim))
                offset_vec[:, d] = offset
                valid_coord, nidx = get_valid_idx(unique_hashes, self._hash(unique_coords + offset_vec))
                blur = blur + csr_matrix((np.ones((len(valid_coord),)), (valid_coord, nidx)),
                                         shape=(self.nvertices, self.nvertices))
            self.blurs.append(blur)

    def _hash(self, coord):
        return np.dot(coord.reshape(-1, self.dim), self.hash_vec)

    def splat(self, x):
        return self.S.dot(x)

    def slice(self, y):
        return self.S.T.dot(y)

    def blur(self, x):
        out = 2 * self.dim * x
        for blur in self.blurs:
            out = out + blur.dot(x)
        return out


def bistochastize(grid, maxiter=10):
    m = grid.splat(np.ones(grid.npixels))
    n = np.ones(grid.nvertices)
    for _ in range(maxiter):
        n = np.sqrt(n * m / grid.blur(n))
    m = n * grid.blur(n)
    return diags(n, 0), diags(m, 0)


def solve(grid, x, w, lam=256, a_diag_min=1e-5, cg_tol=1e-5, cg_maxiter=25):
    dn, dm = bistochastize(grid)
    a_smooth = dm - dn.dot(grid.blur(dn))
    w_splat = grid.splat(w)
    a = lam * a_smooth + diags(w_splat[:, 0], 0)
    xw = x * w
    b = grid.splat(xw)
    m = diags(1 / np.maximum(a.diagonal(), a_diag_min), 0)
    y0 = grid.splat(xw) / w_splat
    yhat = np.empty_like(y0)
    for d in range(x.shape[-1]):
        # scipy renamed cg's tol to rtol (same meaning: relative to ||b||)
        yhat[..., d], _ = cg(a, b[..., d], x0=y0[..., d], M=m, maxiter=cg_maxiter, rtol=cg_tol)
    return grid.slice(yhat)


def bilateral_solver_output(reference, target, sigma_spatial=16, sigma_luma=16, sigma_chroma=8):
    """As TokenCut's, with the RGB array given instead of read from a path."""
    h, w = target.shape
    confidence = np.ones((h, w)) * 0.999
    grid = BilateralGrid(reference, sigma_spatial, sigma_luma, sigma_chroma)
    t = target.reshape(-1, 1).astype(np.double)
    c = confidence.reshape(-1, 1).astype(np.double)
    output_solver = solve(grid, t, c).reshape((h, w))
    binary_solver = ndimage.binary_fill_holes(output_solver > 0.5)
    labeled, nr_objects = ndimage.label(binary_solver)
    nb_pixel = [np.sum(labeled == i) for i in range(nr_objects + 1)]
    pixel_order = np.argsort(nb_pixel)
    try:
        binary_solver = labeled == pixel_order[-2]
    except IndexError:
        binary_solver = np.ones((h, w), dtype=bool)
    return output_solver, binary_solver
