"""The app's object discovery: the Attention tab's method selector (one backbone pass shared with the attention
maps, results cached per setting) and the Video tab's discovered first frame (the same settings)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image
from torchvision import transforms

from app_fixtures import SIZE, SWAN, cfg, fresh_cache  # noqa: F401 - fixtures
from davis_data import make_davis
from dino_seg.app import attention as attention_tab
from dino_seg.app import model_cache
from dino_seg.app import video as video_tab
from dino_seg.attention import compute_attention
from dino_seg.discovery import discover, extract_features
from dino_seg.images import load_image
from dino_seg.pairing import discovered_labels
from dino_seg.viz import overlay_labels
from dino_seg.weights import load_model


def _swan_input() -> Image.Image:
    """The swan as the model sees it at SIZE: resized to a 96-pixel short side (96x170), cropped to 6x10 patches."""
    return transforms.Resize((96, 170))(load_image(SWAN)).crop((0, 0, 160, 96))


def _masks_npy(files: list[str]) -> np.ndarray:
    return np.load([f for f in files if f.endswith("masks.npy")][0])


def _count_calls(monkeypatch, module, name: str) -> list:
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_discovery_outputs_equal_the_library_on_the_attention_tabs_input(cfg, tiny_vit_weights, fresh_cache):
    objects, heat, files, note = attention_tab.run_discovery(str(SWAN), None, SIZE, "MaskCut", 0.15, 0.6, cfg)
    model = load_model(str(tiny_vit_weights), device="cpu").eval()  # an independent load of the same weights
    shown = _swan_input()
    expected = discover(extract_features(model, shown), "maskcut", tau=0.15)
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"patches.npy", "masks.npy", "scores.npy", "boxes.json", "objects.json", "objects.png",
                            "scores.png"}
    assert np.array_equal(np.load(by_name["masks.npy"]), expected.masks)
    assert json.loads(by_name["boxes.json"].read_text()) == [[round(v, 2) for v in b] for b in expected.boxes]
    assert objects.shape == heat.shape == (96, 160, 3)  # the pixels the attention maps show
    assert note.startswith(f"**MaskCut** (tau 0.15, up to 3 objects) · {len(expected.boxes)} object(s)")
    assert "(pixels of the 160x96 input)" in note


def test_refined_masks_and_object_scores_are_shown(cfg, fresh_cache):
    from dino_seg.refine import refine_objects

    plain = attention_tab.run_discovery(str(SWAN), None, SIZE, "TokenCut", 0.2, 0.6, cfg)
    objects, heat, files, note = attention_tab.run_discovery(str(SWAN), None, SIZE, "TokenCut", 0.2, 0.6, cfg,
                                                             refine=True)
    by_name = {Path(f).name: Path(f) for f in files}
    assert {"objects.json", "refined.npy", "refined.png"} <= set(by_name)
    masks = np.load(by_name["masks.npy"])  # the patch masks, as without refinement
    expected = refine_objects(np.asarray(_swan_input()), masks)
    np.testing.assert_allclose(np.load(by_name["refined.npy"]), expected.soft)
    listed = json.loads(by_name["objects.json"].read_text())["objects"]
    assert [o["refined_box"] for o in listed] == [[round(v, 2) for v in b] for b in expected.boxes]
    assert [o["refined"] for o in listed] == expected.accepted
    for i, obj in enumerate(listed):  # the note shows each object's score and what the refinement did
        assert f"object {i + 1}: score {obj['score']:.2f}" in note and f"object {i + 1}: score" in plain[3]
        state = "refined (IoU" if obj["refined"] else "refinement refused"
        assert f"object {i + 1}: score {obj['score']:.2f} (1 − Ncut), {state}" in note
        if not obj["refined"]:  # refused (the tiny random weights' mask): the patch mask is kept
            np.testing.assert_array_equal(expected.masks[i], masks[i])
    assert heat.shape == objects.shape


def test_one_forward_pass_feeds_the_attention_maps_and_every_method(cfg, fresh_cache):
    model, _ = model_cache.get_model(None, cfg)
    calls = []
    handle = model.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        attention_tab.run_attention(str(SWAN), None, SIZE, 0.6, cfg)
        attention_tab.run_discovery(str(SWAN), None, SIZE, "TokenCut", 0.2, 0.6, cfg)
        assert len(calls) == 1  # "Compute attention" runs the backbone once for both halves of the tab
        masks = {}
        for method, tau, threshold in (("LOST", 0.2, 0.6), ("MaskCut", 0.3, 0.6), ("threshold", 0.3, 0.6),
                                       ("threshold", 0.3, 0.3), ("TokenCut", 0.5, 0.3)):
            _, _, files, _ = attention_tab.refresh_discovery(str(SWAN), None, SIZE, method, tau, threshold, cfg)
            masks[(method, tau, threshold)] = _masks_npy(files)
        assert len(calls) == 1  # all from the one cached forward pass
        assert masks[("threshold", 0.3, 0.3)].sum() < masks[("threshold", 0.3, 0.6)].sum()
        attention_tab.run_discovery(str(SWAN), None, SIZE + 32, "TokenCut", 0.2, 0.6, cfg)
        assert len(calls) == 2  # a new size is a new forward pass
    finally:
        handle.remove()
    # The pass is the library's attention: the same maps as compute_attention's (cropped) input.
    result, _, _ = attention_tab.attention_for(SWAN, None, SIZE, cfg)
    np.testing.assert_array_equal(result.maps, compute_attention(model, load_image(SWAN), SIZE).maps)


def test_the_threshold_method_is_the_mean_map_mask_shown(cfg, fresh_cache):
    _, overlays, files, _ = attention_tab.run_attention(str(SWAN), None, SIZE, 0.4, cfg)
    mean_mask = np.load([f for f in files if f.endswith("th0.40.npy")][0])[-1]  # (96, 160), the mean map's
    _, _, d_files, note = attention_tab.run_discovery(str(SWAN), None, SIZE, "threshold", 0.2, 0.4, cfg)
    found = _masks_npy(d_files)
    assert found.shape == (1, 96, 160)
    labels, count = scipy.ndimage.label(mean_mask[::16, ::16])  # patch level, 4-connected
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    assert count >= 1 and np.array_equal(found[0], np.kron(largest, np.ones((16, 16), bool)))
    assert note.startswith("**threshold** (mean-map mask keeping 40% of the mass, largest component)")


def test_moving_the_threshold_does_not_run_tokencut_or_maskcut_again(cfg, fresh_cache, monkeypatch):
    calls = _count_calls(monkeypatch, attention_tab, "discover")
    for method in ("TokenCut", "MaskCut"):
        first = attention_tab.run_discovery(str(SWAN), None, SIZE, method, 0.2, 0.6, cfg)
        for threshold in (0.3, 0.45, 0.9):
            again = attention_tab.refresh_discovery(str(SWAN), None, SIZE, method, 0.2, threshold, cfg)
            assert np.array_equal(_masks_npy(again[2]), _masks_npy(first[2]))
    assert len(calls) == 2  # once per method
    attention_tab.refresh_discovery(str(SWAN), None, SIZE, "TokenCut", 0.35, 0.9, cfg)  # tau: a new cut
    attention_tab.refresh_discovery(str(SWAN), None, SIZE, "threshold", 0.35, 0.3, cfg)
    attention_tab.refresh_discovery(str(SWAN), None, SIZE, "threshold", 0.8, 0.3, cfg)  # tau: not read
    assert len(calls) == 4


def test_maskcut_tau_defaults_to_the_command_lines(fresh_cache):
    assert attention_tab.default_tau("MaskCut") == 0.15 and attention_tab.default_tau("TokenCut") == 0.2
    assert attention_tab.method_changed("MaskCut")["value"] == 0.15
    assert attention_tab.method_changed("LOST") == gr.update()  # no tau: the slider keeps its value
    settings = attention_tab.discovery_settings("MaskCut")
    assert settings == {"method": "maskcut", "tau": 0.15, "dinoseg_head": None, "threshold": 0.6}
    assert attention_tab.discovery_settings("LOST", 0.4)["tau"] is None


def test_slider_moves_without_an_image_skip_every_output(cfg):
    outputs = attention_tab.refresh_discovery(None, None, SIZE, "LOST", 0.2, 0.6, cfg)
    assert len(outputs) == 4 and all(isinstance(o, type(gr.skip())) for o in outputs)


def test_video_first_frame_discovered_with_the_attention_tabs_settings(cfg, tiny_vit_weights, tmp_path, video_codec):
    root = make_davis(tmp_path / "davis", {"shapes": 3}, n_objects=2)
    video, paths, slider, first_overlay, note = video_tab.run_video(
        video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 3, 64, cfg, video_tab.DISCOVERED,
        "MaskCut")
    assert len(paths) == 3 and "first-frame objects discovered by MaskCut (tau 0.15" in note
    assert "paired with the annotated" in note
    frame = root / "JPEGImages" / "480p" / "shapes" / "00000.jpg"
    annotation = np.array(Image.open(root / "Annotations" / "480p" / "shapes" / "00000.png"))
    model = load_model(str(tiny_vit_weights), device="cpu").eval()
    expected = discovered_labels(model, load_image(frame), annotation, "maskcut", resize=64, tau=0.15,
                                 dinoseg_head=None, threshold=0.6)
    overlay = first_overlay if not isinstance(first_overlay, str) else np.asarray(Image.open(paths[0]))
    assert isinstance(first_overlay, str) == (video_codec == "gif")
    drawn = overlay_labels(np.asarray(load_image(frame)), expected)
    if video_codec == "gif":  # a GIF-only OpenCV build: the first overlay is the frame view's JPEG (quality 92)
        jpeg = io.BytesIO()
        Image.fromarray(drawn).save(jpeg, "JPEG", quality=92)
        assert np.array_equal(overlay, np.asarray(Image.open(jpeg)))
    else:
        assert np.array_equal(overlay, drawn)


def test_uploaded_video_with_a_discovered_first_frame(cfg, tiny_vit_weights, tmp_path):
    # An upload has no annotation: every discovered object is propagated, numbered in discovery order.
    import cv2

    root = make_davis(tmp_path / "davis", {"shapes": 3}, n_objects=2)
    frames = sorted((root / "JPEGImages" / "480p" / "shapes").glob("*.jpg"))
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    video, paths, _, _, note = video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(clip), None, None, None,
                                                   3, 64, cfg, video_tab.DISCOVERED, "TokenCut")
    assert len(paths) == 3 and "first-frame objects discovered by TokenCut (tau 0.20" in note
    assert "paired" not in note and "J&F" not in note
    model = load_model(str(tiny_vit_weights), device="cpu").eval()
    first = load_image(Path(paths[0]).parent.parent / "frames" / "00000.jpg")
    expected = discovered_labels(model, first, None, "tokencut", resize=64, tau=0.2, dinoseg_head=None,
                                 threshold=0.6)
    assert f"{int(expected.max())} object(s)" in note
    results = Path(paths[0]).parent.parent / "results" / "clip"
    assert np.array_equal(np.array(Image.open(results / "00000.png")), expected)


@pytest.mark.parametrize("method", ["LOST", "threshold"])
def test_discovered_first_frame_methods_without_tau(cfg, tiny_vit_weights, tmp_path, method):
    root = make_davis(tmp_path / "davis", {"shapes": 2}, n_objects=1)
    frames = sorted((root / "JPEGImages" / "480p" / "shapes").glob("*.jpg"))
    model, _ = model_cache.get_model(None, cfg)
    clip = video_tab.Clip("shapes", frames, None, 10.0, [])
    labels, note = video_tab.discover_first_frame(model, clip, method, 64)
    expected = discovered_labels(model, load_image(frames[0]), None, attention_tab.DISCOVERY_METHODS[method],
                                 resize=64, dinoseg_head=None, threshold=0.6)
    assert np.array_equal(labels, expected) and labels.max() == 1
    assert note == f"first-frame objects discovered by {method} (at a 64-pixel short side)"
