"""The Results tab's handlers on a real eval.davis output folder made with tiny random weights."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app_fixtures import cfg  # noqa: F401 - fixture
from davis_data import make_davis
from dino_seg import davis, metrics
from app import build_demo
from dino_seg.app import results as results_tab
from dino_seg.app import video as video_tab
from dino_seg.app.config import AppConfig
from dino_seg.images import load_image
from dino_seg.viz import overlay_labels
from eval import davis as davis_cli


CFG = AppConfig(allowed_roots=None)  # a loopback page: any folder


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_vit_weights) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("results")
    root = make_davis(base / "davis", {"shapes": 5, "more": 4}, n_objects=2)
    out = base / "out"
    code = davis_cli.main(["--pretrained_weights", str(tiny_vit_weights), "--data_path", str(root),
                           "--output_dir", str(out), "--short_side", "64"])
    assert code == 0
    return out, root


def test_results_folder_table_chart_and_frames(results):
    out, root = results
    summary, table, chart, choices = results_tab.open_results(str(out), CFG)
    csv_rows = (out / "per-sequence_results-val.csv").read_text().splitlines()[1:]
    assert list(table["Sequence"]) == [r.split(",")[0] for r in csv_rows] == ["shapes_1", "shapes_2", "more_1",
                                                                             "more_2"]
    np.testing.assert_allclose(table["J&F"], ((table["J-Mean"] + table["F-Mean"]) / 2).round(3))
    global_row = (out / "global_results-val.csv").read_text().splitlines()[1].split(",")
    assert summary.startswith(f"**J&F-Mean {float(global_row[0]):.3f}**")
    assert len(chart.axes[0].patches) == 3 * 4  # J&F, J and F bars for each object
    assert choices["choices"] == ["shapes", "more"]

    figure, slider = results_tab.sequence_scores(str(out), str(root), "shapes", CFG)
    scored = metrics.score_sequence(out, root, "shapes")
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2 * 2  # J and F of each object
    np.testing.assert_allclose(lines[0].get_ydata(), scored.j[0])
    assert slider["maximum"] == 4

    gt, pred, note = results_tab.compare_frame(str(out), str(root), "shapes", 2, CFG)
    frame = np.asarray(load_image(root / "JPEGImages" / "480p" / "shapes" / "00002.jpg"))
    assert np.array_equal(gt, overlay_labels(frame, davis.read_annotation(
        root / "Annotations" / "480p" / "shapes" / "00002.png")))
    assert np.array_equal(pred, overlay_labels(frame, davis.read_annotation(out / "shapes" / "00002.png")))
    assert note == "shapes frame 00002"


def test_results_errors(tmp_path):
    with pytest.raises(gr.Error, match="results folder not found"):
        results_tab.open_results(str(tmp_path / "missing"), CFG)
    with pytest.raises(gr.Error, match="python -m eval.davis --results_path"):  # an empty folder
        results_tab.open_results(str(tmp_path), CFG)
    with pytest.raises(gr.Error, match="Type a results folder: the --output_dir"):
        results_tab.open_results(" ", CFG)
    root = make_davis(tmp_path / "davis", {"shapes": 2})
    with pytest.raises(gr.Error, match=r"davis is a DAVIS dataset \(JPEGImages, Annotations\), not results"):
        results_tab.open_results(str(root), CFG)


def test_empty_tables_show_their_own_headers():
    demo = build_demo(CFG)
    tables = [b for b in demo.blocks.values() if isinstance(b, gr.Dataframe)]
    headers = sorted(tuple(t.value["headers"]) for t in tables)
    assert headers == [("Sequence", "J&F", "J-Mean", "F-Mean"), ("file", "epoch", "size (MB)", "saved")]
    assert all(t.value["data"] == [] or t.value["data"] == [[]] for t in tables)


def test_the_video_tab_scores_a_sequence_as_eval_davis_does(results, cfg):
    # The same weights, frames and short side: the app's masks are eval.davis's, bit for bit, and its J&F is the
    # one eval.davis wrote for that sequence (the audit saw 0.689 in the app against 0.688 on the command line).
    out, root = results
    _, paths, _, _, note = video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None,
                                               5, 64, cfg)
    app_results = Path(paths[0]).parent.parent / "results" / "shapes"
    for frame in sorted((out / "shapes").glob("*.png")):
        assert np.array_equal(np.array(Image.open(app_results / frame.name)), np.array(Image.open(frame)))
    g = metrics.summarise([metrics.score_sequence(out, root, "shapes")]).global_scores  # eval.davis's folder
    per_object = dict(line.split(",", 1) for line in (out / "per-sequence_results-val.csv").read_text().splitlines())
    assert per_object["shapes_1"] == f"{metrics.score_sequence(out, root, 'shapes').j[0].mean():.3f}," + \
        per_object["shapes_1"].split(",")[1]  # the CSV eval.davis wrote holds these scores
    match = re.search(r"\*\*J&F (\d\.\d{3})\*\* \(J (\d\.\d{3}), F (\d\.\d{3})\)", note)
    assert match and match.groups() == (f"{g['J&F-Mean']:.3f}", f"{g['J-Mean']:.3f}", f"{g['F-Mean']:.3f}")
