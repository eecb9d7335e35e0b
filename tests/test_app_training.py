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
    summary, figure, table, choices = training_tab.open_training_run(str(train_run))
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
        training_tab.open_training_run(str(tmp_path / "missing"))
    with pytest.raises(gr.Error, match="not a training folder"):
        training_tab.open_training_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"it": 0}\nnot json\n{"it": 2}\n')
    with pytest.raises(gr.Error, match="line 2 is not JSON"):
        training_tab.open_training_run(str(tmp_path))
    with pytest.raises(gr.Error, match="Open a training folder"):
        training_tab.use_checkpoint(None, cfg)
