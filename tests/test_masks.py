"""The one IoU, box IoU and extent, and the ground-truth lookup rule shared by eval.attention and eval.discover."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_seg.groundtruth import find_ground_truth, ground_truth_files
from dino_seg.masks import box_iou, iou_matrix, mask_extent, mask_iou
from dino_seg.metrics import db_eval_iou


def test_mask_iou_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 0.0 and mask_iou(a, b, empty=1.0) == 1.0  # both empty: the caller says
    a[:2, :2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert mask_iou(a, b) == pytest.approx(1 / 7)
    void = np.zeros((4, 4), bool)
    void[2, 2] = True  # a void pixel of b leaves the union
    assert mask_iou(a, b, void) == pytest.approx(1 / 6)
    void[1, 1] = True  # the shared pixel is void too: no intersection left
    assert mask_iou(a, b, void) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        mask_iou(a, b[:3])


def test_davis_iou_is_the_same_iou():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 9, 7)) > 0.5
    assert db_eval_iou(a, b) == mask_iou(a, b) == pytest.approx((a & b).sum() / (a | b).sum())
    assert db_eval_iou(a & False, b & False) == 1.0


def test_iou_matrix_equals_pairwise_iou():
    rng = np.random.default_rng(1)
    a = rng.random((3, 6, 5)) > 0.6
    b = list(rng.random((2, 6, 5)) > 0.4) + [np.zeros((6, 5), bool)]
    m = iou_matrix(a, b)
    assert m.shape == (3, 3)
    assert m.tolist() == [[pytest.approx(mask_iou(x, y)) for y in b] for x in a]
    assert (m[:, 2] == 0).all()
    assert iou_matrix(a[:0], b).shape == (0, 3)


def test_box_iou_and_mask_extent():
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges share no area
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0  # empty boxes
    mask = np.zeros((5, 6), bool)
    mask[1:3, 2] = True
    mask[4, 4] = True
    assert mask_extent(mask) == [2.0, 1.0, 5.0, 5.0]  # x1, y1 exclusive
    with pytest.raises(ValueError, match="empty"):
        mask_extent(np.zeros((2, 2), bool))


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(path) if path.suffix == ".png" else path.write_text("<a/>")
    return path


def test_ground_truth_subfolder_first_and_no_shared_stem_fallback(tmp_path):
    images = tmp_path / "images"
    a, b, c, top = images / "a" / "x.jpg", images / "b" / "x.jpg", images / "c" / "y.jpg", images / "z.jpg"
    gt = tmp_path / "gt"
    flat_x, flat_y, flat_z = _touch(gt / "x.png"), _touch(gt / "y.png"), _touch(gt / "z.png")
    found = ground_truth_files(gt, [a, b, c, top], images)
    # a/x.jpg and b/x.jpg share a stem: neither takes gt/x.png; the unique y and the top-level z do.
    assert found == {a: None, b: None, c: flat_y, top: flat_z}
    sub_x = _touch(gt / "a" / "x.png")
    found = ground_truth_files(gt, [a, b, c, top], images)
    assert found[a] == sub_x and found[b] is None
    # Alone, b/x.jpg may fall back to the flat file.
    assert ground_truth_files(gt, [b], images) == {b: flat_x}
    # A single image given as a file: its folder is the root.
    assert ground_truth_files(gt, [a], a.parent) == {a: flat_x}


def test_ground_truth_png_before_xml_and_voc_annotations(tmp_path):
    gt = tmp_path / "gt"
    xml = _touch(gt / "Annotations" / "v.xml")
    assert find_ground_truth(gt, "v.jpg") is None  # masks only unless xml
    assert find_ground_truth(gt, "v.jpg", xml=True) == xml
    flat_xml = _touch(gt / "v.xml")
    assert find_ground_truth(gt, "v.jpg", xml=True) == flat_xml
    png = _touch(gt / "v.png")
    assert find_ground_truth(gt, "v.jpg", xml=True) == png
    _touch(gt / "w.jpg")  # a JPEG named like the image is no mask (the image folder given as its own ground truth)
    assert find_ground_truth(gt, "w.jpg") is None
