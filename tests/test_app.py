"""The app's shared pieces called directly with tiny random weights: the model cache, the weights banner,
scratch folders, one-line errors, the page and its command line."""

from __future__ import annotations

import os
import re
import threading
import urllib.error
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from app_fixtures import SIZE, SWAN, cfg, fresh_cache  # noqa: F401 - fixtures
from dino_seg.app import attention as attention_tab
from dino_seg.app import components, jobs, model_cache, serve, weights_bar
from dino_seg.app.config import BUNDLED_DAVIS
from dino_seg.app.errors import friendly, scrub_paths
from dino_seg.app.model_cache import RANDOM_WEIGHTS
from dino_seg.app.scratch import SCRATCH, VIEWS, Scratch
from dino_seg.files import NoSpaceError
from dino_seg.models import build_backbone
from dino_seg.weights import WeightsError


def test_models_load_once_per_source(cfg):
    first, description = model_cache.get_model(None, cfg)
    again, _ = model_cache.get_model(cfg.weights, cfg)
    assert first is again
    assert description == "vit_tiny16.pth (vit_tiny/16)"
    random_model, random_description = model_cache.get_model(RANDOM_WEIGHTS, cfg)
    assert random_model is not first and random_model is model_cache.get_model("random", cfg)[0]
    assert random_description.startswith("RANDOM weights, vit_tiny/16 (pipeline check only: not DINO")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(cfg):
    model_cache.clear_models()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    model, _ = model_cache.get_model(RANDOM_WEIGHTS, cfg)
    assert torch.equal(torch.rand(1), expected_next)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = build_backbone("vit_tiny", 16)
    assert torch.equal(model.pos_embed, reference.pos_embed)


def test_unavailable_preset_gives_a_banner_not_a_crash(cfg, tmp_path, monkeypatch):
    # Offline: no preset in the (empty) hub cache and every download fails as it does without a network.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    banner = weights_bar.check_weights("dino_vits16", cfg)
    cache_path = tmp_path / "torch" / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth"
    assert "Weights not available: `dino_vits16`" in banner
    assert f"`{cache_path}`" in banner
    assert "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth" in banner
    # The page's own words, and the presets the dropdown lists (all but the missing one).
    assert "**Weights**" in banner and "**Upload a checkpoint (.pth)**" in banner and f"**{RANDOM_WEIGHTS}**" in banner
    named = re.search(r"another preset in \*\*Weights\*\* \(([^)]*)\)", banner).group(1)
    dropdown = [value for _, value in weights_bar.weight_choices(cfg) if value in model_cache.PRESETS]
    # "DINO: `a`, `b`; DINOv2: `c`, ...": the generations' groups in the dropdown's order
    listed = [name for group in named.replace("`", "").split("; ") for name in group.split(": ")[1].split(", ")]
    assert listed == [v for v in dropdown if v != "dino_vits16"]
    assert "`dino_resnet50`" not in banner  # no attention: not in the dropdown either
    with pytest.raises(gr.Error, match=re.escape(str(cache_path))):
        attention_tab.run_attention(str(SWAN), "dino_vits16", SIZE, 0.6, cfg)


def test_banner_for_random_unreadable_and_usable_weights(cfg, tmp_path):
    assert weights_bar.check_weights(RANDOM_WEIGHTS, cfg).startswith("### RANDOM weights, vit_tiny/16")
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    assert "Weights cannot be used" in weights_bar.check_weights(str(bad), cfg)
    assert "not a readable PyTorch checkpoint" in weights_bar.check_weights(str(bad), cfg)
    assert weights_bar.check_weights(None, cfg) == "Weights: **vit_tiny16.pth (vit_tiny/16)** on cpu"
    update, banner = weights_bar.add_uploaded_weights(cfg.weights, cfg)
    assert update["value"] == cfg.weights and (RANDOM_WEIGHTS, RANDOM_WEIGHTS) in update["choices"]
    assert banner.startswith("Weights: **vit_tiny16.pth")


def test_models_and_maps_follow_a_checkpoint_rewritten_in_place(cfg, tmp_path, fresh_cache):
    # "Use in the Attention tab" on a running training's checkpoint.pth: each epoch rewrites the file.
    path = tmp_path / "checkpoint.pth"
    torch.manual_seed(1)
    torch.save(build_backbone("vit_tiny", 16).state_dict(), path)
    first, _ = model_cache.get_model(str(path), cfg)
    maps_before = attention_tab.attention_for(SWAN, str(path), SIZE, cfg)[0].maps
    assert model_cache.get_model(str(path), cfg)[0] is first  # unchanged: served from the cache
    torch.manual_seed(2)
    torch.save(build_backbone("vit_tiny", 16).state_dict(), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock may not tick between
    second, _ = model_cache.get_model(str(path), cfg)
    assert second is not first and not torch.equal(second.pos_embed, first.pos_embed)
    expected = build_backbone("vit_tiny", 16)
    expected.load_state_dict(torch.load(path))
    assert torch.equal(second.pos_embed, expected.pos_embed)  # the new epoch's weights
    maps_after = attention_tab.attention_for(SWAN, str(path), SIZE, cfg)[0].maps
    assert not np.array_equal(maps_before, maps_after)
    files = attention_tab.run_attention(str(SWAN), str(path), SIZE, 0.6, cfg)[2]
    assert np.array_equal(np.load([f for f in files if f.endswith("attention.npy")][0]), maps_after)
    assert sum(key[0] == str(path) for key in model_cache._MODELS) == 1  # the old version is not kept


def test_scratch_never_deletes_a_folder_in_use():
    now = [0.0]
    scratch = Scratch(keep=2, grace_s=100.0, clock=lambda: now[0])
    with scratch.job("video") as running:
        browsed = scratch.new("video")
        now[0] = 50.0
        young = [scratch.new("x") for _ in range(3)]  # over `keep`, but all used within the grace time
        assert all(f.exists() for f in [running, browsed, *young])
        now[0] = 140.0
        assert scratch.touch(browsed / "overlay" / "00003.jpg")  # the frame slider read it
        now[0] = 200.0
        later = scratch.new("x")
        # Over `keep` and idle past the grace time: the young folders go; the running job's and the browsed stay.
        assert [f.exists() for f in young] == [False, False, False]
        assert running.exists() and browsed.exists() and later.exists()
    now[0] = 400.0
    scratch.new("x"), scratch.new("x")
    assert not running.exists() and not browsed.exists()  # once the job ended and the slider left them
    assert not scratch.touch(browsed / "overlay" / "00003.jpg")
    assert len(list(scratch.root.iterdir())) == 2
    scratch.cleanup()
    assert not scratch.root.exists()


@pytest.mark.parametrize("error", [KeyError("boom"), ValueError("boom"), OSError("boom")])
def test_unexpected_errors_become_one_line(capsys, error):
    # Only the project's input errors are the person's fault: a ValueError or OSError of ours is a bug.
    @friendly
    def broken() -> None:
        raise error

    with pytest.raises(gr.Error, match=rf"unexpected error \({type(error).__name__}\): .*boom"):
        broken()
    assert "Traceback" in capsys.readouterr().err  # the console keeps the trace; the page does not


def test_full_disks_and_refused_paths_are_the_persons_to_fix(capsys, tmp_path):
    @friendly
    def full() -> None:
        raise NoSpaceError(tmp_path / "out.webm")

    with pytest.raises(gr.Error, match="no space left on device while writing"):
        full()
    assert "Traceback" not in capsys.readouterr().err


def test_user_errors_are_one_line_on_the_console_without_temporary_paths(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / ("ef" * 32) / "notes.pth"

    @friendly
    def refuse(path: str) -> None:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ('{path}' is text)")

    with pytest.raises(gr.Error) as raised:
        refuse(str(upload))
    assert raised.value.message == "notes.pth: not a readable PyTorch checkpoint ('notes.pth' is text)"
    assert raised.value.print_exception is False  # Gradio prints no traceback for it
    assert capsys.readouterr().err == "refuse: notes.pth: not a readable PyTorch checkpoint ('notes.pth' is text)\n"

    @friendly
    def outer(path: str) -> None:  # a handler calling another (refresh_attention -> run_attention)
        refuse(path)

    with pytest.raises(gr.Error):
        outer(str(upload))
    assert capsys.readouterr().err == "refuse: notes.pth: not a readable PyTorch checkpoint ('notes.pth' is text)\n"
    assert scrub_paths(f"{SCRATCH.root}/000003-video/frames/00000.jpg is bad") == (
        "00000.jpg is bad")
    assert scrub_paths("/data/DAVIS/JPEGImages/480p/bear/00000.jpg is bad") == (
        "/data/DAVIS/JPEGImages/480p/bear/00000.jpg is bad")  # the person's own paths stay whole


# --- the page and the command line

def test_page_has_five_tabs_and_the_flags_have_their_defaults(cfg):
    demo = app.build_demo(cfg)
    assert isinstance(demo, gr.Blocks)
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert labels == ["Attention", "Compare", "Video", "Results", "Training"]
    args = app.get_args_parser().parse_args([])
    assert (args.pretrained_weights, args.host, args.port, args.share) == ("dino_vits16", "127.0.0.1", 7860, False)
    assert args.davis_root == str(BUNDLED_DAVIS)
    assert app.main(["--device", "nonsense"]) == 2


def test_a_new_davis_root_redraws_the_preview_and_successes_close_error_toasts(cfg):
    demo = app.build_demo(cfg)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    # The preview follows the listing of a submitted root, even when the dropdown keeps its value (no change).
    redraw = fns["root_first_frame"]
    assert redraw.trigger_after == fns["list_davis"]._id and redraw.trigger_only_on_success
    assert [o.elem_id for o in redraw.outputs] == ["video-first"]
    # Each run that can fail closes the earlier error toasts once it succeeds, in the browser (no request).
    closing = [fn for fn in demo.fns.values() if fn.js == components.CLEAR_ERRORS_JS]
    assert all(fn.fn is None and fn.trigger_only_on_success for fn in closing)
    names = {fn._id: fn.api_name for fn in demo.fns.values()}
    assert sorted(names[fn.trigger_after] for fn in closing) == [
        "attention_video", "compare", "discover", "open_results", "open_training", "propagate", "use_checkpoint"]


def test_the_start_up_line_names_share_not_gradios_launch_hint():
    line = serve.started_line("127.0.0.1", 7861, share=False)
    assert line == ("* Running on http://127.0.0.1:7861 (python app.py --share adds a public gradio.live link); "
                    "Ctrl-C stops the app")
    assert "launch()" not in line and "--share" not in serve.started_line("::1", 7861, share=True)
    assert serve.started_line("::1", 7861, share=True).startswith("* Running on http://[::1]:7861;")


def test_shutting_down_waits_for_running_jobs_and_refuses_new_ones(capsys):
    started, finish, done = threading.Event(), threading.Event(), []

    @friendly
    def slow() -> str:
        started.set()
        finish.wait(timeout=60)
        return "finished"

    worker = threading.Thread(target=lambda: done.append(slow()))
    worker.start()
    assert started.wait(timeout=60)
    try:
        assert jobs.close(timeout=0.2) is False and jobs.running() == 1  # still running: close waited, in vain
        with pytest.raises(gr.Error, match="the app is shutting down"):
            slow()
        finish.set()
        assert jobs.close(timeout=60) is True and done == ["finished"]
    finally:
        finish.set()
        worker.join()
        jobs.reopen()
    assert "slow: the app is shutting down" in capsys.readouterr().err


def test_adjusted_components_are_drawn_by_their_gradio_parents():
    assert [c.get_block_name() for c in (components.Slider(0, 1), components.Radio(["a"]),
                                         components.FrameSlider(0, 1), components.UploadImage())] == [
        "slider", "radio", "slider", "image"]


def test_image_outputs_reach_gradio_as_png_files():
    image = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    data = components.ImageView(interactive=False).postprocess(image)
    path = Path(data.path)
    assert path.suffix == ".png" and VIEWS.root in path.parents
    assert np.array_equal(np.asarray(Image.open(path)), image)
