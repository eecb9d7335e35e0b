"""The app's object discovery: the Attention tab's method selector and the Video tab's discovered first frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_fixtures import SIZE, SWAN, cfg  # noqa: F401 - fixtures
from davis_data import make_davis
from dino_seg.app import attention as attention_tab
from dino_seg.app import model_cache
from dino_seg.app import video as video_tab
from dino_seg.discovery import discover, extract_features
from dino_seg.pairing import discovered_labels
from dino_seg.images import load_image
from dino_seg.viz import overlay_labels
from dino_seg.weights import load_model


@pytest.fixture()
def fresh_features():
    attention_tab.FEATURES_CACHE.clear()
    yield
    attention_tab.FEATURES_CACHE.clear()


def test_discovery_outputs_equal_the_library(cfg, tiny_vit_weights, fresh_features):
    objects, heat, files, note = attention_tab.run_discovery(str(SWAN), None, SIZE, "MaskCut", 0.15, 0.6, cfg)
    model = load_model(str(tiny_vit_weights), device="cpu").eval()  # an independent load of the same weights
    image, _ = attention_tab.load_input_image(SWAN)
    expected = discover(extract_features(model, image, resize=SIZE), "maskcut", tau=0.15)
    by_name = {Path(f).name: Path(f) for f in files}
    assert set(by_name) == {"patches.npy", "masks.npy", "scores.npy", "boxes.json", "objects.png", "scores.png"}
    assert np.array_equal(np.load(by_name["masks.npy"]), expected.masks)
    assert json.loads(by_name["boxes.json"].read_text()) == [[round(v, 2) for v in b] for b in expected.boxes]
    assert objects.shape == heat.shape == (image.height, image.width, 3)
    assert note.startswith(f"**MaskCut** (tau 0.15, up to 3 objects) · {len(expected.boxes)} object(s)")


def test_changing_method_tau_or_threshold_runs_no_second_forward_pass(cfg, fresh_features):
    model, _ = model_cache.get_model(None, cfg)
    calls = []
    handle = model.patch_embed.register_forward_hook(lambda *args: calls.append(1))
    try:
        attention_tab.run_discovery(str(SWAN), None, SIZE, "TokenCut", 0.2, 0.6, cfg)
        assert len(calls) == 1
        masks = {}
        for method, tau, threshold in (("LOST", 0.2, 0.6), ("MaskCut", 0.3, 0.6), ("threshold", 0.3, 0.6),
                                       ("threshold", 0.3, 0.3), ("TokenCut", 0.5, 0.3)):
            _, _, files, _ = attention_tab.refresh_discovery(str(SWAN), None, SIZE, method, tau, threshold, cfg)
            masks[(method, tau, threshold)] = np.load([f for f in files if f.endswith("masks.npy")][0])
        assert len(calls) == 1  # all from the one cached forward pass
        assert masks[("threshold", 0.3, 0.3)].sum() < masks[("threshold", 0.3, 0.6)].sum()
        attention_tab.run_discovery(str(SWAN), None, SIZE + 32, "TokenCut", 0.2, 0.6, cfg)
        assert len(calls) == 2  # a new size is a new forward pass
    finally:
        handle.remove()
    assert attention_tab.refresh_discovery(None, None, SIZE, "LOST", 0.2, 0.6, cfg)[0] is not None


def test_video_first_frame_discovered(cfg, tiny_vit_weights, tmp_path):
    root = make_davis(tmp_path / "davis", {"shapes": 3}, n_objects=2)
    video, paths, slider, first_overlay, note = video_tab.run_video(
        video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 3, 64, cfg, video_tab.DISCOVERED,
        "TokenCut")
    assert len(paths) == 3 and "first-frame objects discovered by TokenCut, paired with the annotated" in note
    frame = root / "JPEGImages" / "480p" / "shapes" / "00000.jpg"
    annotation = np.array(Image.open(root / "Annotations" / "480p" / "shapes" / "00000.png"))
    model = load_model(str(tiny_vit_weights), device="cpu").eval()
    expected = discovered_labels(model, load_image(frame), annotation, "tokencut")
    if not isinstance(first_overlay, str):  # a GIF-only OpenCV build returns the GIF's path instead
        assert np.array_equal(first_overlay, overlay_labels(np.asarray(load_image(frame)), expected))
