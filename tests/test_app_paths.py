"""On a public address the page opens only paths under the folders given on the command line and uploads."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import pytest
import torch

from app_fixtures import SWAN
from davis_data import make_davis
from dino_seg.app import attention as attention_tab
from dino_seg.app import results as results_tab
from dino_seg.app import training as training_tab
from dino_seg.app import video as video_tab
from dino_seg.app import weights_bar
from dino_seg.app.config import AppConfig
from dino_seg.app.paths import PathNotAllowed, allowed_roots, is_loopback, private_upload_folder, shared_roots
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
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # Gradio's cache root, shared by its apps
    cfg = AppConfig(weights=str(tiny_vit_weights), device="cpu", train_dir=str(shared),
                    allowed_roots=shared_roots([str(shared), "", str(tiny_vit_weights)]),
                    upload_dir=private_upload_folder())  # this app's own folder in it
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
    upload = Path(cfg.upload_dir) / ("ab" * 32) / "mine.pth"
    upload.parent.mkdir(parents=True)
    torch.save(build_backbone("vit_tiny", 16).state_dict(), upload)
    assert weights_bar.check_weights(str(upload), cfg).startswith("Weights: **mine.pth (vit_tiny/16)**")
    # Another Gradio app's upload in the shared cache root is not this page's.
    other = tmp_path / "gradio" / ("cd" * 32) / "theirs.pth"
    other.parent.mkdir(parents=True)
    torch.save(build_backbone("vit_tiny", 16).state_dict(), other)
    _refusal(lambda: weights_bar.check_weights(str(other), cfg))


def test_weights_files_outside_are_refused(public, tmp_path):
    cfg, _, private = public
    elsewhere = private / "other.pth"
    torch.save(build_backbone("vit_tiny", 16).state_dict(), elsewhere)
    _refusal(lambda: weights_bar.check_weights(str(elsewhere), cfg))
    _refusal(lambda: training_tab.use_checkpoint(str(elsewhere), cfg))
    assert "RANDOM weights" in weights_bar.check_weights("random", cfg)  # presets and random are no paths


def test_sequence_names_cannot_leave_the_root(public):
    for name in ("../../etc", "a/b", "..", "x\\y"):
        with pytest.raises(gr.Error) as raised:
            video_tab.davis_first_frame(None, name, public[0])
        assert raised.value.message == f"sequence {name!r} is not a folder name"


def test_sequence_folders_are_resolved_and_checked(public):
    # A sequence folder inside a shared DAVIS root that is a symbolic link to a private folder is refused.
    cfg, shared, private = public
    root = make_davis(shared / "davis", {"shapes": 3})
    make_davis(private / "davis", {"secret": 3})
    os.symlink(private / "davis" / "JPEGImages" / "480p" / "secret", root / "JPEGImages" / "480p" / "secret")
    assert video_tab.davis_first_frame(str(root), "shapes", cfg).shape == (64, 96, 3)
    _refusal(lambda: video_tab.davis_first_frame(str(root), "secret", cfg))
    _refusal(lambda: video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "secret", None, None, None, None, 3, 64,
                                         cfg))
    _refusal(lambda: results_tab.compare_frame(str(root), str(root), "secret", 1, cfg))
    os.symlink(private / "davis" / "Annotations" / "480p" / "secret", root / "Annotations" / "480p" / "shapes2")
    (root / "JPEGImages" / "480p" / "shapes2").mkdir()
    _refusal(lambda: video_tab.davis_first_frame(str(root), "shapes2", cfg))  # its annotations lead out


def test_empty_paths_are_refused_not_read_as_the_working_directory(public, tmp_path, monkeypatch):
    cfg, shared, _ = public
    monkeypatch.chdir(shared)  # the server's working directory is even a shared folder
    for call, what in ((lambda: training_tab.open_training_run("  ", cfg), "training"),
                       (lambda: results_tab.open_results("", cfg), "results"),
                       (lambda: training_tab.open_training_run("", AppConfig(allowed_roots=None)), "training")):
        with pytest.raises(gr.Error, match=f"Type a {what} folder: the --output_dir of a"):
            call()
    with pytest.raises(gr.Error, match="no results folder given"):  # the check itself refuses it too
        results_tab.compare_frame("", None, "blackswan", 1, cfg)
    with pytest.raises(PathNotAllowed, match="no image given"):
        attention_tab.attention_for("", None, 128, cfg)


def test_a_default_configuration_fails_closed(tmp_path):
    (tmp_path / "run").mkdir()
    _refusal(lambda: training_tab.open_training_run(str(tmp_path / "run"), AppConfig()))
    assert video_tab.list_davis(None, AppConfig())["choices"] == ["blackswan"]  # the bundled assets only


def test_on_loopback_any_path_is_opened(tmp_path):
    with pytest.raises(gr.Error, match="not a training folder"):
        training_tab.open_training_run(str(tmp_path), AppConfig(allowed_roots=None))


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
    upload = Path(cfg.upload_dir) / ("cd" * 32) / "notes.png"
    upload.parent.mkdir(parents=True)
    upload.write_text("not an image")
    with pytest.raises(gr.Error, match="notes.png: not an image file"):  # an upload is read
        attention_tab.run_attention(str(upload), None, 128, 0.6, cfg)
    elsewhere = tmp_path / "gradio" / ("ef" * 32) / "swan.jpg"  # Gradio's cache root, not this app's folder
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(SWAN.read_bytes())
    _refusal(lambda: attention_tab.run_attention(str(elsewhere), None, 128, 0.6, cfg))
