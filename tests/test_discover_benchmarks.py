"""eval.discover on benchmarks: --benchmark, --preprocess resize, --refine outputs, summary.json, objects.json,
--n_objects auto and --export coco, on tiny fake datasets and tiny random weights."""

import json

import numpy as np
import pytest
from PIL import Image

from dino_seg.discovery import extract_features
from dino_seg.localization import corloc_hit
from dino_seg.saliency import saliency_metrics
from dino_seg.weights import load_model
from eval import discover as cli
from eval import discover_run


def _photo(path, seed, size=(40, 56)):
    """A bright square on a dark noisy background (the refinement has an edge to find)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (*size, 3)).astype(np.uint8)
    img[8:28, 12:40] = 220
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def _ecssd(root, n=2):
    (root / "ECSSD" / "gt").mkdir(parents=True)
    for i in range(n):
        _photo(root / "ECSSD" / "img" / f"{i:04d}.jpg", i)
        gt = np.zeros((40, 56), dtype=np.uint8)
        gt[8:28, 12:40] = 255
        Image.fromarray(gt).save(root / "ECSSD" / "gt" / f"{i:04d}.png")


def test_preprocess_resize_rounds_to_patch_multiples(tiny_vit_weights):
    model = load_model(str(tiny_vit_weights), device="cpu")
    image = Image.new("RGB", (56, 40))  # 3.5 x 2.5 patches of 16
    f = extract_features(model, image, preprocess_mode="resize")
    assert f.grid == (2, 4) and f.input_hw == (32, 64) and f.original_hw == (40, 56)  # round(2.5)=2, round(3.5)=4
    assert extract_features(model, image).grid == (3, 4)  # pad: ceil
    with pytest.raises(ValueError, match="--preprocess"):
        extract_features(model, image, preprocess_mode="crop")


def test_saliency_benchmark_with_refine_and_coco_export(tmp_path, tiny_vit_weights, capsys):
    from pycocotools.coco import COCO

    _ecssd(tmp_path / "data")
    out = tmp_path / "out"
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--device", "cpu", "--benchmark", "ecssd",
                     "--data_path", str(tmp_path / "data"), "--refine", "--export", "coco",
                     "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preprocess: resize; benchmark: ecssd (2 images)" in printed and "refined: maxFbeta" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "ecssd" and summary["preprocess"] == "resize" and summary["images"] == 2
    assert set(summary["coarse"]) == set(summary["refined"]) == {"maxFbeta", "IoU", "Acc", "CorLoc", "Jaccard"}
    gts, coarse, soft = [], [], []
    coco = COCO(str(out / "coco.json"))
    for i in range(2):
        folder = out / "ECSSD" / "img" / f"{i:04d}"
        masks, boxes = np.load(folder / "masks.npy"), json.loads((folder / "boxes.json").read_text())
        objects = json.loads((folder / "objects.json").read_text())
        assert [o["box"] for o in objects["objects"]] == boxes and objects["stop_score"] is None
        assert all(0 <= o["score"] <= 1 and isinstance(o["refined"], bool) for o in objects["objects"])
        refined = np.load(folder / "refined.npy")
        assert refined.dtype == np.float32 and refined.shape == masks.shape[1:] == (40, 56)
        png = np.asarray(Image.open(folder / "refined.png"))
        assert png.shape == (40, 56) and set(np.unique(png)) <= {0, 255}
        gts.append(np.asarray(Image.open(tmp_path / "data" / "ECSSD" / "gt" / f"{i:04d}.png").convert("L")))
        coarse.append(masks.any(axis=0).astype(np.float64))
        soft.append(refined)
        # the export holds exactly masks.npy and boxes.json
        image_id = next(im["id"] for im in coco.dataset["images"] if im["file_name"] == f"ECSSD/img/{i:04d}.jpg")
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(boxes)
        for ann, mask, box, obj in zip(anns, masks, boxes, objects["objects"]):
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]])
            assert ann["score"] == pytest.approx(obj["score"], abs=1e-4)
    # the coarse block scores the masks on disk, the refined one the soft output (float32 as stored)
    for key, value in saliency_metrics(coarse, gts).items():
        assert summary["coarse"][key] == pytest.approx(value)
    for key, value in saliency_metrics(soft, gts).items():
        assert summary["refined"][key] == pytest.approx(value, abs=1e-4)
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].endswith("refined_maxFbeta,refined_IoU,refined_Acc,refined_CorLoc,refined_Jaccard")


def test_resume_skips_finished_images_and_scores_them_all(tmp_path, tiny_vit_weights, monkeypatch, capsys):
    _ecssd(tmp_path / "data", n=2)
    out = tmp_path / "out"
    argv = ["--pretrained_weights", str(tiny_vit_weights), "--device", "cpu", "--benchmark", "ecssd", "--data_path",
            str(tmp_path / "data"), "--refine", "--export", "coco", "--output_dir", str(out)]
    assert cli.main(argv) == 0
    first = {name: (out / name).read_text() for name in ("summary.json", "scores.csv", "coco.json")}
    (out / "ECSSD" / "img" / "0001" / "objects.json").unlink()  # as if interrupted while writing image 0001
    seen = []
    real = discover_run.extract_features
    monkeypatch.setattr(discover_run, "extract_features", lambda model, image, *a, **k: seen.append(image.size) or
                        real(model, image, *a, **k))
    capsys.readouterr()
    assert cli.main(argv + ["--resume"]) == 0
    assert "resume: 1 of 2 image(s) already done" in capsys.readouterr().out
    assert len(seen) == 1  # only the unfinished image ran again
    assert {name: (out / name).read_text() for name in first} == first  # counted as the first run counted it
    assert cli.main(argv) == 0 and len(seen) == 3  # without --resume every image runs again


def test_voc_benchmark_corloc_and_maskcut_auto(tmp_path, tiny_vit_weights):
    base = tmp_path / "data" / "VOC2007" / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    (base / "Annotations").mkdir()
    for i in ("000001", "000002"):
        _photo(base / "JPEGImages" / f"{i}.jpg", int(i))
        (base / "Annotations" / f"{i}.xml").write_text(
            "<annotation><object><truncated>0</truncated><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>56</xmax><ymax>40</ymax></bndbox></object></annotation>")  # the whole image
    out = tmp_path / "out"
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--device", "cpu", "--benchmark", "voc07",
                     "--data_path", str(tmp_path / "data"), "--method", "maskcut", "--n_objects", "auto",
                     "--output_dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preprocess"] == "pad" and summary["coarse"]["maxFbeta"] is None
    hits = []
    for i in ("000001", "000002"):
        folder = out / "VOC2007" / "VOCdevkit" / "VOC2007" / "JPEGImages" / i
        boxes = json.loads((folder / "boxes.json").read_text())
        objects = json.loads((folder / "objects.json").read_text())
        assert [o["box"] for o in objects["objects"]] == boxes
        assert all(o["score"] >= 0.5 for o in objects["objects"])  # auto keeps confident objects only
        assert objects["stop_score"] is None or objects["stop_score"] < 0.5
        hits.append(corloc_hit(boxes, [[0.0, 0.0, 56.0, 40.0]]))
    assert summary["coarse"]["CorLoc"] == pytest.approx(np.mean(hits))


def test_benchmark_errors_are_one_line(tmp_path, tiny_vit_weights, capsys):
    base = ["--pretrained_weights", str(tiny_vit_weights), "--device", "cpu", "--output_dir", str(tmp_path / "o")]
    assert cli.main(base + ["--benchmark", "ecssd"]) == 2
    assert capsys.readouterr().err.strip() == "error: --benchmark ecssd: give its root with --data_path ROOT"
    assert cli.main(base + ["--benchmark", "dut-omron", "--data_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DUT_OMRON/img/*.jpg and DUT_OMRON/gt/*.png" in err
    assert cli.main(base + ["--n_objects", "many"]) == 2
    assert "--n_objects: expected a number or 'auto'" in capsys.readouterr().err
