"""--preprocess resize: get_saliency.py's LANCZOS resize to patch multiples."""

import numpy as np
import pytest
from PIL import Image

from dino_seg.preprocess import check_preprocess, patch_multiple_size, resize_to_patches


def test_sizes_round_to_nearest_patch_multiple():
    assert patch_multiple_size(400, 300, 16) == (400, 304)  # 18.75 -> 19
    assert patch_multiple_size(24, 40, 16) == (32, 32)  # 1.5 -> 2 and 2.5 -> 2: Python's round, as TokenCut's
    assert patch_multiple_size(5, 5, 16) == (16, 16)  # at least one patch


def test_resize_is_lanczos_and_noop_on_multiples():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    out = resize_to_patches(im, 16)
    assert out.size == (48, 32)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(im.resize((48, 32), resample=Image.LANCZOS)))
    same = Image.new("RGB", (32, 16))
    assert resize_to_patches(same, 16) is same
    with pytest.raises(ValueError, match="--preprocess: expected one of pad, resize"):
        check_preprocess("crop")
