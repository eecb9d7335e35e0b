"""benchmarks/discovery_table.py on tiny fake benchmarks: cells, resume, subsets and the published numbers."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "discovery_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("discovery_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _data(root):
    rng = np.random.default_rng(0)
    (root / "ECSSD" / "img").mkdir(parents=True)
    (root / "ECSSD" / "gt").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "ECSSD" / "img" / "a.jpg")
    gt = np.zeros((32, 48), dtype=np.uint8)
    gt[8:24, 8:40] = 255
    Image.fromarray(gt).save(root / "ECSSD" / "gt" / "a.png")
    base = root / "VOC2012" / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("2008_000001\n")
    (base / "JPEGImages").mkdir()
    (base / "Annotations").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(base / "JPEGImages" / "2008_000001.jpg")
    (base / "Annotations" / "2008_000001.xml").write_text(
        "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>48</xmax><ymax>32</ymax></bndbox></object>"
        "</annotation>")


def test_table_runs_resumes_and_grows(tmp_path, tiny_vit_weights, table, monkeypatch, capsys):
    _data(tmp_path / "data")
    out = tmp_path / "table"
    argv = ["--data_path", str(tmp_path / "data"), "--output_dir", str(out), "--device", "cpu",
            "--backbones", str(tiny_vit_weights), "--methods", "tokencut"]
    assert table.main(argv) == 0
    label = Path(tiny_vit_weights).stem
    assert sorted(p.parent.name for p in (out / "runs" / label / "tokencut").glob("*/summary.json")) == [
        "ecssd", "voc12"]  # the benchmarks found under the root
    rows = table.collect(out / "runs")
    ecssd = {(r["stage"], r["metric"]): r for r in rows if r["benchmark"] == "ecssd"}
    assert set(ecssd) == {(s, m) for s in ("coarse", "refined") for m in ("maxFbeta", "IoU", "Acc")}
    assert ecssd[("refined", "maxFbeta")]["published"] == 87.4 and ecssd[("coarse", "IoU")]["published"] == 71.2
    summary = json.loads((out / "runs" / label / "tokencut" / "voc12" / "summary.json").read_text())
    voc = next(r for r in rows if r["benchmark"] == "voc12")
    assert voc["measured"] == round(100 * summary["coarse"]["CorLoc"], 1) and voc["published"] == 72.1
    md = (out / "leaderboard.md").read_text()
    assert f"| tokencut | {label} | " in md and "(72.1)" in md and "(80.3) / " in md
    assert (out / "leaderboard.csv").read_text().splitlines()[0] == ",".join(table.COLUMNS)

    # Resume: finished cells are not run again; a new method only runs its own cells.
    ran = []
    monkeypatch.setattr(table, "run_cell", lambda backbone, method, bench, *a: ran.append((method, bench)) or 0)
    capsys.readouterr()
    assert table.main(argv) == 0 and ran == []
    assert "[done]" in capsys.readouterr().out
    assert table.main(argv[:-1] + ["lost", "tokencut", "--benchmarks", "voc12"]) == 0
    assert ran == [("lost", "voc12")]


def test_default_backbones_follow_the_registry(table, monkeypatch):
    from dino_seg import weights

    presets = {"dino_vits16": None, "dino_vitb16": None, "dinov2_vits14": None, "dinov2_vits14_reg": None,
               "dinov2_vitb14": None, "dinov3_vits16": None}
    monkeypatch.setattr(weights, "PRESETS", presets)
    assert table.default_backbones() == ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"]


def test_no_benchmark_found_is_one_line(tmp_path, table, capsys):
    assert table.main(["--data_path", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no complete benchmark found" in err and "VOC2007/VOCdevkit" in err
