"""COCO pseudo-label export: RLE byte-equal to pycocotools', and a round trip through its COCO API."""

import json

import numpy as np
import pytest

from dino_seg.coco_export import CocoExport, encode_rle, rle_counts

mask_utils = pytest.importorskip("pycocotools.mask")


def test_rle_counts_by_hand():
    m = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0, 1, 1, 1
    assert rle_counts(m) == [1, 3]
    assert rle_counts(np.ones((2, 2), dtype=bool)) == [0, 4]  # starts with an empty background run


def test_rle_equals_pycocotools():
    rng = np.random.default_rng(0)
    for i in range(40):
        h, w = rng.integers(1, 30, 2)
        m = rng.random((h, w)) < (0 if i == 0 else 1 if i == 1 else rng.random())
        theirs = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert encode_rle(m) == {"size": [int(h), int(w)], "counts": theirs["counts"].decode()}
    big = np.zeros((300, 400), dtype=bool)
    big[10:290, 3:399] = True  # long runs: multi-group counts and negative differences
    assert encode_rle(big)["counts"] == mask_utils.encode(np.asfortranarray(big.astype(np.uint8)))["counts"].decode()


def test_round_trip_through_coco_api(tmp_path):
    from pycocotools.coco import COCO

    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 12:19, 20:29] = True
    boxes = [[3.0, 2.0, 12.0, 10.0], [20.0, 12.0, 29.0, 19.0]]
    export = CocoExport()
    export.add_image("a/one.jpg", masks, boxes, [0.9, 0.4])
    export.add_image("two.jpg", np.zeros((0, 8, 8), dtype=bool), [])  # no object: listed, no annotation
    path = export.write(tmp_path / "pseudo.json")
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["object"]
    assert sorted(coco.getImgIds()) == [1, 2] and coco.getAnnIds(imgIds=[2]) == []
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    for ann, mask, box, score in zip(anns, masks, boxes, [0.9, 0.4]):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        assert ann["area"] == mask.sum() and ann["score"] == score and ann["category_id"] == 1
    assert json.loads(path.read_text())["images"][0] == {"id": 1, "file_name": "a/one.jpg", "height": 20,
                                                         "width": 30}
    with pytest.raises(ValueError, match="2 masks"):
        export.add_image("x.jpg", masks, boxes[:1])
