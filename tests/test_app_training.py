"""The Training tab's handlers on a training folder as `python -m train` leaves it."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from app_fixtures import SIZE, SWAN, cfg, fresh_cache  # noqa: F401 - fixtures
from dino_seg.app import attention as attention_tab
from dino_seg.app import training as training_tab
from dino_seg.models import build_backbone


@pytest.fixture()
def train_run(tmp_path) -> Path:
    """A training folder as `python -m train` leaves it: logs and two checkpoints of a vit_tiny teacher."""
    run = tmp_path / "run"
    run.mkdir()
    records = [{"it": it, "epoch": it // 5, "loss": 10 - 0.5 * it, "lr": 1e-4 * it, "wd": 0.04, "momentum": 0.996,
                "teacher_temp": 0.04, "teacher_entropy": 6.0 - 0.1 * it, "kl": 0.5} for it in range(10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "log.txt").write_text("".join(json.dumps({"train_loss": 9.0 - e, "epoch": e}) + "\n" for e in range(2)))
    torch.manual_seed(1)
    teacher = {f"backbone.{k}": v for k, v in build_backbone("vit_tiny", 16).state_dict().items()}
    for name in ("checkpoint0000.pth", "checkpoint.pth"):
        torch.save({"teacher": teacher, "student": teacher, "epoch": 1}, run / name)
    return run


def test_training_folder_curves_and_checkpoints(train_run, cfg, fresh_cache):
    summary, figure, table, choices = training_tab.open_training_run(str(train_run), cfg)
    assert summary.startswith("10 iteration(s), 2 finished epoch(s), 2 checkpoint(s) · last loss 5.5")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "loss" and "teacher temperature" in titles and titles[-1] == "mean loss per epoch (log.txt)"
    assert any(t.startswith("teacher entropy") for t in titles) and any(t.startswith("KL") for t in titles)
    np.testing.assert_allclose(figure.axes[0].get_lines()[0].get_ydata(), [10 - 0.5 * it for it in range(10)])
    assert list(table["file"]) == ["checkpoint0000.pth", "checkpoint.pth"]
    assert list(table["epoch"]) == [0, "latest"]
    assert choices["value"] == str(train_run / "checkpoint.pth")

    weights, tabs, banner = training_tab.use_checkpoint(choices["value"], cfg)
    assert weights["value"] == str(train_run / "checkpoint.pth") and tabs.selected == "attention"
    assert banner == "Weights: **checkpoint.pth (vit_tiny/16)** on cpu"
    _, _, _, note = attention_tab.run_attention(str(SWAN), weights["value"], SIZE, 0.6, cfg)
    assert note.startswith("**checkpoint.pth (vit_tiny/16)**")


def test_training_errors(tmp_path, cfg):
    with pytest.raises(gr.Error, match="training folder not found"):
        training_tab.open_training_run(str(tmp_path / "missing"), cfg)
    with pytest.raises(gr.Error, match="not a training folder"):
        training_tab.open_training_run(str(tmp_path), cfg)
    (tmp_path / "metrics.jsonl").write_text('{"it": 0}\nnot json\n{"it": 2}\n')
    with pytest.raises(gr.Error, match="line 2 is not JSON"):
        training_tab.open_training_run(str(tmp_path), cfg)
    with pytest.raises(gr.Error, match="Open a training folder"):
        training_tab.use_checkpoint(None, cfg)


def test_training_run_with_knn_and_folders_of_knn_and_linear_results(train_run, tmp_path, cfg):
    # k-NN while training (--knn_data_path) adds knn_top1/knn_top5 to some epochs of log.txt.
    (train_run / "log.txt").write_text(
        json.dumps({"train_loss": 9.0, "epoch": 0, "knn_top1": 12.5, "knn_top5": 40.0}) + "\n" +
        json.dumps({"train_loss": 8.0, "epoch": 1}) + "\n" +
        json.dumps({"train_loss": 7.0, "epoch": 2, "knn_top1": 25.0, "knn_top5": 55.5}) + "\n")
    summary, figure, _, _ = training_tab.open_training_run(str(train_run), cfg)
    assert "k-NN while training (epoch 2): top-1 **25.00%**, top-5 55.50%" in summary
    knn_ax = next(ax for ax in figure.axes if ax.get_title() == "k-NN accuracy of the teacher (%)")
    lines = {line.get_label(): line for line in knn_ax.get_lines()}
    np.testing.assert_allclose(lines["top1"].get_xdata(), [0, 2])
    np.testing.assert_allclose(lines["top1"].get_ydata(), [12.5, 25.0])
    np.testing.assert_allclose(lines["top5"].get_ydata(), [40.0, 55.5])
    assert len(figure.axes) == 9  # 8 panels and the k-NN one: unused grid cells are removed

    # A folder of `python -m eval.knn --output_dir` only.
    knn_dir = tmp_path / "knn"
    knn_dir.mkdir()
    (knn_dir / "knn.json").write_text(json.dumps({"10": {"top1": 70.25, "top5": 90.0}, "20": {"top1": 71.5,
                                                  "top5": 91.0}, "train_images": 100, "args": {"nb_knn": [10, 20]}}))
    summary, figure, table, _ = training_tab.open_training_run(str(knn_dir), cfg)
    assert "| 10 | 70.25 | 90.00 |\n| 20 | 71.50 | 91.00 |" in summary and table.empty

    # A folder of `python -m eval.linear`: log.txt with validated epochs, checkpoint.pth.tar.
    lin = tmp_path / "linear"
    lin.mkdir()
    (lin / "checkpoint.pth.tar").write_bytes(b"")
    (lin / "log.txt").write_text("".join(json.dumps({"train_loss": 2.0 - e / 10, "train_lr": 0.001, "epoch": e,
                                                     "test_loss": 1.5, "test_acc1": 50.0 + e, "test_acc5": 80.0})
                                         + "\n" for e in range(3)))
    summary, figure, _, _ = training_tab.open_training_run(str(lin), cfg)
    assert "Linear probe: best top-1 **52.00%** at epoch 2 (3 validated epoch(s))" in summary
    ax = next(ax for ax in figure.axes if ax.get_title() == "linear probe accuracy (%)")
    np.testing.assert_allclose({ln.get_label(): ln for ln in ax.get_lines()}["top-1"].get_ydata(), [50, 51, 52])

    (knn_dir / "knn.json").write_text('{"20": {"top1": 1}}')
    with pytest.raises(gr.Error, match="knn.json: expected"):
        training_tab.open_training_run(str(knn_dir), cfg)
