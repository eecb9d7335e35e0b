"""Benchmark readers (saliency folders, VOCdevkit, COCO20k) on tiny fake datasets."""

import json

import numpy as np
import pytest
from PIL import Image

from dino_seg.discovery_data import DatasetError, available_benchmarks, load_benchmark, read_saliency_gt


def _jpg(path, w=32, h=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8)).save(path)


def _voc_xml(path, objects):
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<object><name>{n}</name><truncated>{t}</truncated><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
             f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
             for n, t, d, b in objects]
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename>{''.join(parts)}</annotation>")


def _voc(root, year="2007"):
    base = root / f"VOC{year}" / "VOCdevkit" / f"VOC{year}"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000001\n")
    for i in ("000005", "000001"):
        _jpg(base / "JPEGImages" / f"{i}.jpg")
    _voc_xml(base / "Annotations" / "000005.xml", [("dog", 0, 0, (1, 1, 32, 24)), ("cat", 1, 0, (5, 6, 10, 12))])
    _voc_xml(base / "Annotations" / "000001.xml", [("car", 0, 1, (2, 3, 4, 5))])
    return base


def test_saliency_folders(tmp_path):
    (tmp_path / "ECSSD" / "gt").mkdir(parents=True)
    for name in ("b", "a"):
        _jpg(tmp_path / "ECSSD" / "img" / f"{name}.jpg")
        Image.fromarray(np.array([[0, 1], [0, 255]], dtype=np.uint8)).save(tmp_path / "ECSSD" / "gt" / f"{name}.png")
    bench, items = load_benchmark("ecssd", tmp_path)
    assert bench.kind == "saliency" and bench.preprocess == "resize"
    assert [it.key for it in items] == ["a", "b"]  # sorted, as get_saliency.py lists them
    np.testing.assert_array_equal(read_saliency_gt(items[0].gt_mask), [[0, 1], [0, 255]])
    assert available_benchmarks(tmp_path) == ["ecssd"]
    (tmp_path / "ECSSD" / "gt" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 2 images have no mask.*ECSSD/img/\*\.jpg and ECSSD/gt/\*\.png"):
        load_benchmark("ecssd", tmp_path)
    with pytest.raises(DatasetError, match="DUTS_Test/img"):
        load_benchmark("duts-te", tmp_path)


def test_voc_as_lost_reads_it(tmp_path):
    _voc(tmp_path)
    bench, items = load_benchmark("voc07", tmp_path)
    assert bench.kind == "corloc" and bench.preprocess == "pad"
    assert [it.key for it in items] == ["000005", "000001"]  # trainval.txt order
    assert items[0].gt_boxes == [[0.0, 0.0, 32.0, 24.0], [4.0, 5.0, 10.0, 12.0]]  # xmin, ymin lose 1
    _, hard_free = load_benchmark("voc07", tmp_path, no_hard=True)
    # --no_hard: the truncated cat goes; 000001 keeps no object and is dropped
    assert [(it.key, it.gt_boxes) for it in hard_free] == [("000005", [[0.0, 0.0, 32.0, 24.0]])]
    with pytest.raises(DatasetError, match="voc12.*VOC2012/VOCdevkit/VOC2012"):
        load_benchmark("voc12", tmp_path)
    (tmp_path / "VOC2007/VOCdevkit/VOC2007/Annotations/000001.xml").unlink()
    with pytest.raises(DatasetError, match="1 of the 2 trainval images lack"):
        load_benchmark("voc07", tmp_path)


def test_coco20k(tmp_path):
    names = ["train2014/COCO_train2014_000000000009.jpg", "train2014/COCO_train2014_000000000025.jpg"]
    (tmp_path / "coco_20k_filenames.txt").write_text("\n".join(names) + "\n")
    for n in names:
        _jpg(tmp_path / "COCO" / "images" / n)
    ann = {"images": [{"id": 9, "file_name": "x"}, {"id": 25, "file_name": "y"}, {"id": 30, "file_name": "z"}],
           "annotations": [{"image_id": 9, "bbox": [1.4, 2.6, 10.0, 5.5], "iscrowd": 0},
                           {"image_id": 9, "bbox": [0, 0, 3, 3], "iscrowd": 1},
                           {"image_id": 30, "bbox": [0, 0, 3, 3], "iscrowd": 0}],
           "categories": []}
    (tmp_path / "COCO" / "annotations").mkdir(parents=True)
    (tmp_path / "COCO" / "annotations" / "instances_train2014.json").write_text(json.dumps(ann))
    assert available_benchmarks(tmp_path) == ["coco20k"]
    _, items = load_benchmark("coco20k", tmp_path)
    assert [(it.key, it.gt_boxes) for it in items] == [
        ("COCO_train2014_000000000009", [[1.0, 3.0, 11.0, 8.0]]),  # rounded [x, y, x + w, y + h], crowd left out
        ("COCO_train2014_000000000025", [])]
    (tmp_path / "COCO" / "images" / names[1]).unlink()
    with pytest.raises(DatasetError, match="1 of the 2 listed images are missing"):
        load_benchmark("coco20k", tmp_path)


def test_bad_name_and_root(tmp_path):
    with pytest.raises(DatasetError, match="--benchmark: expected one of ecssd"):
        load_benchmark("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        load_benchmark("ecssd", tmp_path / "nope")
