"""The Attention tab's handlers with tiny random weights: outputs equal the library's, errors are readable."""

from __future__ import annotations

import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app_fixtures import SIZE, SWAN, cfg, fresh_cache  # noqa: F401 - fixtures
from dino_seg.app import attention as attention_tab
from dino_seg.app import model_cache
from dino_seg.app.config import AppConfig
from dino_seg.app.model_cache import RANDOM_WEIGHTS
from dino_seg.attention import compute_attention
from dino_seg.images import load_image
from dino_seg.viz import heatmap
from dino_seg.weights import load_model


def test_attention_outputs_equal_the_library(cfg, tiny_vit_weights, fresh_cache):
    heat, overlays, files, note = attention_tab.run_attention(str(SWAN), None, SIZE, 0.6, cfg)
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
    model, _ = model_cache.get_model(None, cfg)
    calls = []
    handle = model.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        _, _, files_60, _ = attention_tab.run_attention(str(SWAN), None, SIZE, 0.6, cfg)
        assert len(calls) == 1
        _, _, files_30, _ = attention_tab.refresh_attention(str(SWAN), None, SIZE, 0.3, cfg)
        assert len(calls) == 1  # the threshold alone re-uses the cached attention
        attention_tab.run_attention(str(SWAN), None, SIZE + 32, 0.3, cfg)
        assert len(calls) == 2  # a new image size is a new forward pass
    finally:
        handle.remove()
    masks_60 = np.load([f for f in files_60 if f.endswith("th0.60.npy")][0])
    masks_30 = np.load([f for f in files_30 if f.endswith("th0.30.npy")][0])
    expected = compute_attention(model, load_image(SWAN), SIZE)
    assert np.array_equal(masks_30, expected.masks(0.3, include_mean=True))
    assert masks_30.sum() < masks_60.sum()  # less mass kept, fewer pixels


def test_slider_moves_without_an_image_change_nothing(cfg):
    outputs = attention_tab.refresh_attention(None, None, SIZE, 0.5, cfg)
    assert len(outputs) == 4 and all(isinstance(o, type(gr.skip())) for o in outputs)
    with pytest.raises(gr.Error, match="Pick an example or upload an image"):
        attention_tab.run_attention(None, None, SIZE, 0.5, cfg)


def test_random_weights_are_labelled_as_such(cfg, fresh_cache):
    heat, overlays, _, note = attention_tab.run_attention(str(SWAN), RANDOM_WEIGHTS, SIZE, 0.6, cfg)
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
    heat, overlays, _, note = attention_tab.run_attention(str(path), None, SIZE, 0.6, cfg)
    assert len(heat) == 3 and len(overlays) == 4
    assert f"- note: {mode_note} converted to 8-bit RGB" in note
    result, _, _ = attention_tab.attention_for(path, None, SIZE, cfg)
    if kind == "16-bit":  # scaled to 8 bits, not saturated at 255 as a plain conversion would be
        assert result.image.min() < 10 and result.image.max() > 245
    if kind == "rgba":  # alpha dropped, colour kept
        assert np.all(np.abs(result.image.astype(int) - 90) <= 1)


def test_huge_image_is_downscaled_with_a_note(cfg, tmp_path, fresh_cache):
    path = tmp_path / "huge.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 2600, 3), dtype=np.uint8)).save(path)
    _, _, _, note = attention_tab.run_attention(str(path), None, SIZE, 0.6, cfg)
    assert "- note: image of 2600x1000 downscaled to 2048x788 (cap 2048 px)" in note


def test_non_image_upload_is_a_readable_error(cfg, tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4 not an image")
    with pytest.raises(gr.Error, match="not an image file"):
        attention_tab.run_attention(str(path), None, SIZE, 0.6, cfg)


def test_resnet_weights_are_refused_for_attention(tmp_path):
    cfg = AppConfig(weights=RANDOM_WEIGHTS, arch="resnet50", device="cpu")
    with pytest.raises(gr.Error, match="ResNet-50 weights have no self-attention or patch features"):
        attention_tab.run_attention(str(SWAN), None, SIZE, 0.6, cfg)


def test_examples_include_bundled_and_scikit_image_files():
    names = [Path(p).name for p in attention_tab.example_images()]
    assert names[:2] == ["blackswan.jpg", "car-shadow.jpg"]
    assert {"chelsea.png", "camera.png", "logo.png"} <= set(names)
    assert all(Path(p).is_file() for p in attention_tab.example_images())
