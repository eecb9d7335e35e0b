"""The app's handlers called directly with tiny random weights: outputs equal the library's, errors are readable."""

from __future__ import annotations

import json
import re
import urllib.error
import zipfile
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

import app
from davis_data import make_davis
from dino_seg import davis, metrics
from dino_seg.attention import compute_attention
from dino_seg.images import load_image
from dino_seg.models import build_backbone
from dino_seg.propagation import segment_sequence
from dino_seg.viz import heatmap, overlay_labels
from dino_seg.weights import load_model
from eval import davis as davis_cli

SWAN = app.ASSETS / "images" / "blackswan.jpg"
SIZE = 96  # short side of the attention tests: 6 x 10 patches keep them fast


@pytest.fixture(scope="module")
def cfg(tiny_vit_weights: Path) -> app.AppConfig:
    return app.AppConfig(weights=str(tiny_vit_weights), arch="vit_tiny", patch_size=16, device="cpu")


@pytest.fixture()
def fresh_cache():
    app._ATTENTION_CACHE.clear()
    yield
    app._ATTENTION_CACHE.clear()


# --- weights

def test_models_load_once_per_source(cfg):
    first, description = app.get_model(None, cfg)
    again, _ = app.get_model(cfg.weights, cfg)
    assert first is again
    assert description == "vit_tiny16.pth (vit_tiny/16)"
    random_model, random_description = app.get_model(app.RANDOM_WEIGHTS, cfg)
    assert random_model is not first and random_model is app.get_model("random", cfg)[0]
    assert random_description.startswith("RANDOM weights, vit_tiny/16 (pipeline check only: not DINO")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(cfg):
    app._load.cache_clear()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    model, _ = app.get_model(app.RANDOM_WEIGHTS, cfg)
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
    banner = app.check_weights("dino_vits16", cfg)
    cache_path = tmp_path / "torch" / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth"
    assert "Weights not available: `dino_vits16`" in banner
    assert f"`{cache_path}`" in banner
    assert "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth" in banner
    assert "--pretrained_weights PATH" in banner and app.RANDOM_WEIGHTS in banner
    with pytest.raises(gr.Error, match=re.escape(str(cache_path))):
        app.run_attention(str(SWAN), "dino_vits16", SIZE, 0.6, cfg)


def test_banner_for_random_unreadable_and_usable_weights(cfg, tmp_path):
    assert app.check_weights(app.RANDOM_WEIGHTS, cfg).startswith("### RANDOM weights, vit_tiny/16")
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    assert "Weights cannot be used" in app.check_weights(str(bad), cfg)
    assert "not a readable PyTorch checkpoint" in app.check_weights(str(bad), cfg)
    assert app.check_weights(None, cfg) == "Weights: **vit_tiny16.pth (vit_tiny/16)** on cpu"
    update, banner = app.add_uploaded_weights(cfg.weights, cfg)
    assert update["value"] == cfg.weights and app.RANDOM_WEIGHTS in update["choices"]
    assert banner.startswith("Weights: **vit_tiny16.pth")


# --- attention tab

def test_attention_outputs_equal_the_library(cfg, tiny_vit_weights, fresh_cache):
    heat, overlays, files, note = app.run_attention(str(SWAN), None, SIZE, 0.6, cfg)
    model = load_model(tiny_vit_weights)  # an independent load of the same weights
    expected = compute_attention(model, load_image(SWAN), SIZE)
    masks = expected.masks(0.6, include_mean=True)
    assert len(heat) == 3 and len(overlays) == 3 + 1  # vit_tiny has 3 heads; the mean map's mask last
    assert [caption for _, caption in overlays] == ["head 0 mask", "head 1 mask", "head 2 mask", "mean-map mask"]
    for (image, _), pixel_map in zip(heat, expected.pixel_maps()):
        assert np.array_equal(image, heatmap(pixel_map))
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"masks_th0.60_png.zip", "masks_th0.60.npy", "attention.npy"}
    assert np.array_equal(np.load(by_name["masks_th0.60.npy"]), masks)
    np.testing.assert_allclose(np.load(by_name["attention.npy"]), expected.maps, rtol=1e-5, atol=1e-7)
    with zipfile.ZipFile(by_name["masks_th0.60_png.zip"]) as zf:
        names = sorted(zf.namelist())
        assert names == sorted([f"mask_th0.60_head{j}.png" for j in range(3)] + ["mask_th0.60_mean.png"])
        with zf.open("mask_th0.60_mean.png") as f:
            assert np.array_equal(np.asarray(Image.open(f)), masks[-1].astype(np.uint8) * 255)
    h, w = expected.image.shape[:2]
    assert (h, w) == (96, 160)
    assert note.startswith(f"**vit_tiny16.pth (vit_tiny/16)** · 3 heads · input {w}x{h} px · masks keep 60%")


def test_changing_only_the_threshold_runs_no_second_forward_pass(cfg, fresh_cache):
    model, _ = app.get_model(None, cfg)
    calls = []
    handle = model.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        _, _, files_60, _ = app.run_attention(str(SWAN), None, SIZE, 0.6, cfg)
        assert len(calls) == 1
        _, _, files_30, _ = app.refresh_attention(str(SWAN), None, SIZE, 0.3, cfg)
        assert len(calls) == 1  # the threshold alone re-uses the cached attention
        app.run_attention(str(SWAN), None, SIZE + 32, 0.3, cfg)
        assert len(calls) == 2  # a new image size is a new forward pass
    finally:
        handle.remove()
    masks_60 = np.load([f for f in files_60 if f.endswith("th0.60.npy")][0])
    masks_30 = np.load([f for f in files_30 if f.endswith("th0.30.npy")][0])
    expected = compute_attention(model, load_image(SWAN), SIZE)
    assert np.array_equal(masks_30, expected.masks(0.3, include_mean=True))
    assert masks_30.sum() < masks_60.sum()  # less mass kept, fewer pixels


def test_slider_moves_without_an_image_change_nothing(cfg):
    outputs = app.refresh_attention(None, None, SIZE, 0.5, cfg)
    assert len(outputs) == 4 and all(isinstance(o, type(gr.skip())) for o in outputs)
    with pytest.raises(gr.Error, match="Pick an example or upload an image"):
        app.run_attention(None, None, SIZE, 0.5, cfg)


def test_random_weights_are_labelled_as_such(cfg, fresh_cache):
    heat, overlays, _, note = app.run_attention(str(SWAN), app.RANDOM_WEIGHTS, SIZE, 0.6, cfg)
    assert note.startswith("**RANDOM weights, vit_tiny/16 (pipeline check only: not DINO")
    assert all(caption.endswith("(random weights)") for _, caption in heat + overlays)


@pytest.mark.parametrize("kind, array, mode_note", [
    ("grayscale", np.tile(np.arange(200, dtype=np.uint8), (120, 1)), "grayscale image (L)"),
    ("rgba", np.dstack([np.full((120, 200, 3), 90, np.uint8), np.full((120, 200), 7, np.uint8)]),
     "RGBA (alpha dropped) image (RGBA)"),
    ("16-bit", np.tile(np.linspace(0, 65535, 200).astype(np.uint16), (120, 1)), "16-bit image (I;16)"),
])
def test_image_modes_are_converted_with_a_note(cfg, tmp_path, fresh_cache, kind, array, mode_note):
    path = tmp_path / f"{kind}.png"
    Image.fromarray(array).save(path)
    heat, overlays, _, note = app.run_attention(str(path), None, SIZE, 0.6, cfg)
    assert len(heat) == 3 and len(overlays) == 4
    assert f"- note: {mode_note} converted to 8-bit RGB" in note
    result, _, _ = app.attention_for(path, None, SIZE, cfg)
    if kind == "16-bit":  # scaled to 8 bits, not saturated at 255 as a plain conversion would be
        assert result.image.min() < 10 and result.image.max() > 245
    if kind == "rgba":  # alpha dropped, colour kept
        assert np.all(np.abs(result.image.astype(int) - 90) <= 1)


def test_huge_image_is_downscaled_with_a_note(cfg, tmp_path, fresh_cache):
    path = tmp_path / "huge.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 2600, 3), dtype=np.uint8)).save(path)
    _, _, _, note = app.run_attention(str(path), None, SIZE, 0.6, cfg)
    assert "- note: image of 2600x1000 downscaled to 2048x788 (cap 2048 px)" in note


def test_non_image_upload_is_a_readable_error(cfg, tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4 not an image")
    with pytest.raises(gr.Error, match="not an image file"):
        app.run_attention(str(path), None, SIZE, 0.6, cfg)


def test_resnet_weights_are_refused_for_attention(tmp_path):
    cfg = app.AppConfig(weights=app.RANDOM_WEIGHTS, arch="resnet50", device="cpu")
    with pytest.raises(gr.Error, match="ResNet-50 weights have no self-attention or patch features"):
        app.run_attention(str(SWAN), None, SIZE, 0.6, cfg)


def test_examples_include_bundled_and_scikit_image_files():
    names = [Path(p).name for p in app.example_images()]
    assert names[:2] == ["blackswan.jpg", "car-shadow.jpg"]
    assert {"chelsea.png", "camera.png", "logo.png"} <= set(names)
    assert all(Path(p).is_file() for p in app.example_images())


def test_scratch_keeps_a_bounded_number_of_request_folders():
    scratch = app.Scratch(keep=3)
    folders = [scratch.new("x") for _ in range(5)]
    assert [f.exists() for f in folders] == [False, False, True, True, True]
    assert sorted(p.name for p in scratch.root.iterdir()) == [f.name for f in folders[2:]]
    scratch.cleanup()
    assert not scratch.root.exists()


def test_unexpected_errors_become_one_line(capsys):
    @app.friendly
    def broken() -> None:
        raise KeyError("boom")

    with pytest.raises(gr.Error, match=r"unexpected error \(KeyError\): 'boom'"):
        broken()
    assert "Traceback" in capsys.readouterr().err  # the console keeps the trace; the page does not


# --- video tab

def _jf_from_note(note: str) -> tuple[float, float, float]:
    match = re.search(r"J&F (\d\.\d{3})\*\* \(J (\d\.\d{3}), F (\d\.\d{3})\)", note)
    assert match, note
    return tuple(float(v) for v in match.groups())


def test_davis_sequence_propagation_and_scores(cfg):
    update = app.list_davis(None)
    assert update["choices"] == ["blackswan"] and update["value"] == "blackswan"
    first = app.davis_first_frame(None, "blackswan")
    assert first.shape == (480, 854, 3)
    video, paths, slider, first_overlay, note = app.run_video(
        app.DAVIS_SOURCE, None, "blackswan", None, None, None, None, 4, 240, cfg)
    assert len(paths) == 4 and slider["maximum"] == 3
    assert app.show_frame(paths, 2) == paths[2] and app.show_frame(paths, 99) == paths[3]
    assert "only the first 4 of 12 frames are used" in note and "240-pixel short side" in note
    if video is None:  # no browser-playable codec in this OpenCV: the GIF goes to the frame view
        assert Path(first_overlay).suffix == ".gif" and "animated GIF" in note
    else:
        assert Path(video).suffix in (".mp4", ".webm") and first_overlay.shape == (480, 854, 3)
        capture = cv2.VideoCapture(video)
        count = 0
        while capture.read()[0]:
            count += 1
        assert count == 4

    # J&F recomputed from the library's propagation of the same frames and davis2017-evaluation's measures.
    model, _ = app.get_model(None, cfg)
    frames = davis.frame_paths(app.BUNDLED_DAVIS, "blackswan")[:4]
    gts = [davis.read_annotation(davis.annotation_dir(app.BUNDLED_DAVIS, "blackswan") / f"{f.stem}.png")
           for f in frames]
    preds = dict(segment_sequence(model, frames, gts[0], short_side=240))
    j = np.mean([metrics.db_eval_iou(gts[t] == 1, preds[t] == 1) for t in (1, 2)])
    f = np.mean([metrics.f_measure(preds[t] == 1, gts[t] == 1) for t in (1, 2)])
    assert _jf_from_note(note) == (round((j + f) / 2, 3), round(j, 3), round(f, 3))
    # The frame shown for index 1 is the prediction overlaid on the frame.
    shown = np.asarray(Image.open(paths[1]).convert("RGB")).astype(int)
    expected = overlay_labels(np.asarray(load_image(frames[1])), preds[1]).astype(int)
    assert np.abs(shown - expected).mean() < 3  # JPEG-compressed view of the same overlay


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Five bundled frames at 426x240 as a video file, and the first frame's annotation at that size."""
    folder = tmp_path_factory.mktemp("video")
    path = folder / "swan.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (426, 240))
    for frame in davis.frame_paths(app.BUNDLED_DAVIS, "blackswan")[:5]:
        writer.write(cv2.resize(cv2.imread(str(frame)), (426, 240), interpolation=cv2.INTER_AREA))
    writer.release()
    gt = davis.read_annotation(davis.annotation_dir(app.BUNDLED_DAVIS, "blackswan") / "00000.png")
    return path, np.asarray(Image.fromarray(gt).resize((426, 240), Image.Resampling.NEAREST))


def test_uploaded_video_with_a_mask_of_another_scale(cfg, small_video, tmp_path):
    video_path, labels = small_video
    first, hint = app.video_first_frame(str(video_path))
    assert first.shape == (240, 426, 3) and hint.startswith("First frame loaded (426x240)")
    mask_path = tmp_path / "mask.png"
    Image.fromarray(labels * 255).resize((854, 480), Image.Resampling.NEAREST).save(mask_path)  # 0/255, 2x
    video, paths, slider, _, note = app.run_video(
        app.UPLOAD_SOURCE, None, None, str(video_path), str(mask_path), None, None, 10, 240, cfg)
    assert len(paths) == 5 and slider["maximum"] == 4
    assert "uploaded mask of 854x480 resized to the frame's 426x240" in note
    assert "J&F" not in note  # no ground truth for an uploaded video


def test_drawn_first_frame_mask(cfg, small_video):
    video_path, labels = small_video
    layer = np.zeros((240, 426, 4), np.uint8)
    layer[labels == 1] = (255, 0, 0, 255)
    drawing = {"background": None, "layers": [layer], "composite": None}
    assert np.array_equal(app.mask_from_drawing(drawing), (labels == 1).astype(np.uint8))
    _, paths, _, _, note = app.run_video(app.UPLOAD_SOURCE, None, None, str(video_path), None, drawing, None,
                                         3, 240, cfg)
    assert len(paths) == 3 and "3 frames" in note and "1 object(s)" in note


def test_video_input_errors_are_readable(cfg, small_video, tmp_path):
    video_path, labels = small_video
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((240, 426), np.uint8)).save(empty)
    with pytest.raises(gr.Error, match="first-frame mask is empty"):
        app.run_video(app.UPLOAD_SOURCE, None, None, str(video_path), str(empty), None, None, 3, 240, cfg)
    square = tmp_path / "square.png"
    Image.fromarray(np.full((200, 200), 255, np.uint8)).save(square)
    with pytest.raises(gr.Error, match="uploaded mask is 200x200 but the first frame is 426x240"):
        app.run_video(app.UPLOAD_SOURCE, None, None, str(video_path), str(square), None, None, 3, 240, cfg)
    text = tmp_path / "clip.mp4"
    text.write_text("this is not a video")
    with pytest.raises(gr.Error, match="video"):
        app.run_video(app.UPLOAD_SOURCE, None, None, str(text), str(square), None, None, 3, 240, cfg)
    with pytest.raises(gr.Error, match="upload a mask image or draw"):
        app.run_video(app.UPLOAD_SOURCE, None, None, str(video_path), None, None, None, 3, 240, cfg)
    with pytest.raises(gr.Error, match="DAVIS root not found"):
        app.list_davis(str(tmp_path / "nowhere"))


def test_davis_run_is_scored_only_when_its_frames_have_ground_truth(cfg, tmp_path):
    root = make_davis(tmp_path / "davis", {"shapes": 5})
    _, _, _, _, note = app.run_video(app.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 4, 64, cfg)
    assert re.search(r"\*\*J&F \d\.\d{3}\*\* .* over frames 1–2 \(first and last excluded", note)
    (root / "Annotations" / "480p" / "shapes" / "00002.png").unlink()
    _, _, _, _, note = app.run_video(app.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 4, 64, cfg)
    assert "**J&F" not in note and "no J&F: the ground truth of these frames is incomplete" in note


# --- results tab

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
    summary, table, chart, choices = app.open_results(str(out))
    csv_rows = (out / "per-sequence_results-val.csv").read_text().splitlines()[1:]
    assert list(table["Sequence"]) == [r.split(",")[0] for r in csv_rows] == ["shapes_1", "shapes_2", "more_1",
                                                                             "more_2"]
    np.testing.assert_allclose(table["J&F"], ((table["J-Mean"] + table["F-Mean"]) / 2).round(3))
    global_row = (out / "global_results-val.csv").read_text().splitlines()[1].split(",")
    assert summary.startswith(f"**J&F-Mean {float(global_row[0]):.3f}**")
    assert len(chart.axes[0].patches) == 3 * 4  # J&F, J and F bars for each object
    assert choices["choices"] == ["shapes", "more"]

    figure, slider = app.sequence_scores(str(out), str(root), "shapes")
    scored = metrics.score_sequence(out, root, "shapes")
    lines = figure.axes[0].get_lines()
    assert len(lines) == 2 * 2  # J and F of each object
    np.testing.assert_allclose(lines[0].get_ydata(), scored.j[0])
    assert slider["maximum"] == 4

    gt, pred, note = app.compare_frame(str(out), str(root), "shapes", 2)
    frame = np.asarray(load_image(root / "JPEGImages" / "480p" / "shapes" / "00002.jpg"))
    assert np.array_equal(gt, overlay_labels(frame, davis.read_annotation(
        root / "Annotations" / "480p" / "shapes" / "00002.png")))
    assert np.array_equal(pred, overlay_labels(frame, davis.read_annotation(out / "shapes" / "00002.png")))
    assert note == "shapes frame 00002"


def test_results_errors(tmp_path):
    with pytest.raises(gr.Error, match="results folder not found"):
        app.open_results(str(tmp_path / "missing"))
    with pytest.raises(gr.Error, match="python -m eval.davis --results_path"):
        app.open_results(str(tmp_path))


# --- training tab

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
    summary, figure, table, choices = app.open_training_run(str(train_run))
    assert summary.startswith("10 iteration(s), 2 finished epoch(s), 2 checkpoint(s) · last loss 5.5")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "loss" and "teacher temperature" in titles and titles[-1] == "mean loss per epoch (log.txt)"
    assert any(t.startswith("teacher entropy") for t in titles) and any(t.startswith("KL") for t in titles)
    np.testing.assert_allclose(figure.axes[0].get_lines()[0].get_ydata(), [10 - 0.5 * it for it in range(10)])
    assert list(table["file"]) == ["checkpoint0000.pth", "checkpoint.pth"]
    assert list(table["epoch"]) == [0, "latest"]
    assert choices["value"] == str(train_run / "checkpoint.pth")

    weights, tabs, banner = app.use_checkpoint(choices["value"], cfg)
    assert weights["value"] == str(train_run / "checkpoint.pth") and tabs.selected == "attention"
    assert banner == "Weights: **checkpoint.pth (vit_tiny/16)** on cpu"
    _, _, _, note = app.run_attention(str(SWAN), weights["value"], SIZE, 0.6, cfg)
    assert note.startswith("**checkpoint.pth (vit_tiny/16)**")


def test_training_errors(tmp_path, cfg):
    with pytest.raises(gr.Error, match="training folder not found"):
        app.open_training_run(str(tmp_path / "missing"))
    with pytest.raises(gr.Error, match="not a training folder"):
        app.open_training_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"it": 0}\nnot json\n{"it": 2}\n')
    with pytest.raises(gr.Error, match="line 2 is not JSON"):
        app.open_training_run(str(tmp_path))
    with pytest.raises(gr.Error, match="Open a training folder"):
        app.use_checkpoint(None, cfg)


# --- the page and the command line

def test_page_has_four_tabs_and_the_flags_have_their_defaults(cfg):
    demo = app.build_demo(cfg)
    assert isinstance(demo, gr.Blocks)
    labels = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert labels == ["Attention", "Video", "Results", "Training"]
    args = app.get_args_parser().parse_args([])
    assert (args.pretrained_weights, args.host, args.port, args.share) == ("dino_vits16", "127.0.0.1", 7860, False)
    assert args.davis_root == str(app.BUNDLED_DAVIS)
    assert app.main(["--device", "nonsense"]) == 2
