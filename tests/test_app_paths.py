"""On a public address the page opens only paths under the folders given on the command line and uploads."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import pytest
import torch

from dino_seg.app import attention as attention_tab
from dino_seg.app import results as results_tab
from dino_seg.app import training as training_tab
from dino_seg.app import video as video_tab
from dino_seg.app import weights_bar
from dino_seg.app.config import AppConfig
from dino_seg.app.paths import allowed_roots, is_loopback, shared_roots
from dino_seg.models import build_backbone

REFUSED = "is not in a folder this server shares"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.20", False), ("myhost.example", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_command_line_decides_what_a_public_page_shares(tmp_path, tiny_vit_weights):
    given = [str(tmp_path), "", str(tiny_vit_weights), "dino_vits16"]  # a folder, unset, a file, a preset
    assert allowed_roots("127.0.0.1", False, given) is None
    expected = (str(shared_roots([])[0]), str(tmp_path.resolve()), str(tiny_vit_weights.resolve()))
    assert allowed_roots("0.0.0.0", False, given) == expected
    assert allowed_roots("127.0.0.1", True, given) == expected  # --share makes the page public too


@pytest.fixture()
def public(tmp_path, tiny_vit_weights, monkeypatch) -> tuple[AppConfig, Path, Path]:
    """A public page sharing tmp/shared (as --train_dir) and the start-up weights file; tmp/private exists."""
    shared, private = tmp_path / "shared", tmp_path / "private"
    (shared / "run").mkdir(parents=True)
    private.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    cfg = AppConfig(weights=str(tiny_vit_weights), device="cpu", train_dir=str(shared),
                    allowed_roots=shared_roots([str(shared), "", str(tiny_vit_weights)]))
    return cfg, shared, private


def _refusal(call) -> str:
    with pytest.raises(gr.Error) as raised:
        call()
    assert REFUSED in raised.value.message
    return raised.value.message


def test_folders_outside_the_shared_ones_are_refused_alike_whether_they_exist_or_not(public):
    cfg, shared, private = public
    existing = _refusal(lambda: training_tab.open_training_run(str(private), cfg))
    missing = _refusal(lambda: training_tab.open_training_run(str(private / "nothing"), cfg))
    assert existing.replace(str(private), "X") == missing.replace(str(private / "nothing"), "X")
    _refusal(lambda: training_tab.open_training_run("/etc", cfg))
    _refusal(lambda: training_tab.open_training_run(str(shared / ".." / "private"), cfg))  # `..` leads out
    os.symlink(private, shared / "link")
    _refusal(lambda: training_tab.open_training_run(str(shared / "link"), cfg))  # so does a symbolic link
    _refusal(lambda: results_tab.open_results(str(private), cfg))
    _refusal(lambda: results_tab.compare_frame(str(private), None, "blackswan", 1, cfg))
    _refusal(lambda: results_tab.sequence_scores(str(shared), str(private), "blackswan", cfg))
    _refusal(lambda: video_tab.list_davis(str(private), cfg))
    _refusal(lambda: video_tab.davis_first_frame("/", "etc", cfg))
    _refusal(lambda: video_tab.run_video(video_tab.DAVIS_SOURCE, str(private), "x", None, None, None, None, 3, 240,
                                         cfg))
    _refusal(lambda: video_tab.run_attention_video(video_tab.DAVIS_SOURCE, str(private), "x", None, None, 3, 240,
                                                   "mean", 0.6, cfg))


def test_shared_folders_the_bundled_example_and_uploads_are_opened(public, tmp_path):
    cfg, shared, _ = public
    # Inside the shared folder the handler runs and says what it finds there.
    with pytest.raises(gr.Error, match="not a training folder"):
        training_tab.open_training_run(str(shared / "run"), cfg)
    assert video_tab.list_davis(None, cfg)["choices"] == ["blackswan"]  # the bundled example
    assert video_tab.davis_first_frame("", "blackswan", cfg).shape == (480, 854, 3)
    # The start-up weights file is shared; an uploaded checkpoint (in Gradio's cache) is usable.
    assert weights_bar.check_weights(cfg.weights, cfg).startswith("Weights: **vit_tiny16.pth")
    upload = tmp_path / "gradio" / ("ab" * 32) / "mine.pth"
    upload.parent.mkdir(parents=True)
    torch.save(build_backbone("vit_tiny", 16).state_dict(), upload)
    assert weights_bar.check_weights(str(upload), cfg).startswith("Weights: **mine.pth (vit_tiny/16)**")


def test_weights_files_outside_are_refused(public, tmp_path):
    cfg, _, private = public
    elsewhere = private / "other.pth"
    torch.save(build_backbone("vit_tiny", 16).state_dict(), elsewhere)
    _refusal(lambda: weights_bar.check_weights(str(elsewhere), cfg))
    _refusal(lambda: training_tab.use_checkpoint(str(elsewhere), cfg))
    assert "RANDOM weights" in weights_bar.check_weights("random", cfg)  # presets and random are no paths


def test_sequence_names_cannot_leave_the_root():
    for name in ("../../etc", "a/b", "..", "x\\y"):
        with pytest.raises(gr.Error) as raised:
            video_tab.davis_first_frame(None, name)
        assert raised.value.message == f"sequence {name!r} is not a folder name"


def test_on_loopback_any_path_is_opened(tmp_path):
    with pytest.raises(gr.Error, match="training folder not found"):
        training_tab.open_training_run(str(tmp_path / "nothing"), AppConfig())


def test_file_inputs_must_be_uploads_or_shared_files(public, tmp_path):
    # gradio_client can send any server path as an image, video or mask "upload": Gradio passes it on.
    cfg, shared, private = public
    _refusal(lambda: attention_tab.run_attention("/etc/hostname", None, 128, 0.6, cfg))
    _refusal(lambda: attention_tab.run_discovery("/etc/hostname", None, 128, "TokenCut", 0.2, 0.6, cfg))
    _refusal(lambda: video_tab.video_first_frame(str(private / "clip.mp4"), cfg))
    _refusal(lambda: video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, "/etc/hostname", None, None, None, 3,
                                         240, cfg))
    _refusal(lambda: video_tab.run_attention_video(video_tab.UPLOAD_SOURCE, None, None, "/etc/hostname", None, 3,
                                                   240, "mean", 0.6, cfg))
    upload = tmp_path / "gradio" / ("cd" * 32) / "notes.png"
    upload.parent.mkdir(parents=True)
    upload.write_text("not an image")
    with pytest.raises(gr.Error, match="notes.png: not an image file"):  # an upload is read
        attention_tab.run_attention(str(upload), None, 128, 0.6, cfg)
