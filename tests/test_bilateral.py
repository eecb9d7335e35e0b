"""TokenCut's bilateral-solver refinement against a transcription of its bilateral_solver.py."""

import numpy as np
import pytest

import reference_bilateral as ref
from dino_seg.bilateral import bilateral_solver_output, largest_component, solve_scaled


def _scene(h=48, w=64, seed=0):
    """A yellow rectangle on blue with noise, and a blocky coarse mask (patch-sized steps) around it."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.float64)
    img[...] = (30, 60, 90)
    img[12:36, 16:48] = (200, 180, 40)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    coarse = np.zeros((h, w), dtype=bool)
    coarse[8:40, 16:48] = True
    return img, coarse


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_tokencut_solver(seed):
    img, coarse = _scene(seed=seed)
    soft, binary = ref.bilateral_solver_output(img, coarse.astype(float))
    out = bilateral_solver_output(img, coarse)
    np.testing.assert_allclose(out.soft, soft, atol=1e-9)
    np.testing.assert_array_equal(out.mask, binary)  # the background outnumbers the object: same component
    assert out.mask[12:36, 16:48].mean() > 0.95 and not out.mask[:8].any()  # snapped to the colour edge
    assert out.accepted and out.iou == pytest.approx((out.mask & coarse).sum() / (out.mask | coarse).sum())


def test_refinement_disagreeing_with_coarse_mask_is_marked():
    img, _ = _scene()
    coarse = np.zeros(img.shape[:2], dtype=bool)
    coarse[2:6, 2:6] = True  # a speck in the flat background: smoothed away
    out = bilateral_solver_output(img, coarse)
    assert not out.mask.any() and out.iou == 0.0 and not out.accepted
    assert out.soft.max() < 0.5


def test_largest_component_is_the_largest_object_even_when_it_covers_most_of_the_image():
    binary = np.zeros((10, 10), dtype=bool)
    binary[:, :8] = True  # 80 pixels: TokenCut's argsort(...)[-2] would pick the background here
    binary[0, 9] = True
    assert largest_component(binary).sum() == 80
    assert not largest_component(np.zeros((3, 3), dtype=bool)).any()


def test_downscaled_grid_for_large_inputs():
    img, coarse = _scene(96, 128)
    full = bilateral_solver_output(img, coarse, max_pixels=None)
    small = bilateral_solver_output(img, coarse, max_pixels=96 * 128 // 4)
    assert small.soft.shape == full.soft.shape
    iou = (small.mask & full.mask).sum() / (small.mask | full.mask).sum()
    assert iou > 0.95
    np.testing.assert_array_equal(solve_scaled(img, coarse, max_pixels=96 * 128), full.soft)  # at the cap: exact
