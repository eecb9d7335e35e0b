"""The Video tab's handlers with tiny random weights: propagation equals the library's, J&F is recomputed."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app_fixtures import cfg  # noqa: F401 - fixtures
from davis_data import make_davis
from dino_seg import davis, metrics
from dino_seg.app import model_cache
from dino_seg.app import video as video_tab
from dino_seg.app.config import BUNDLED_DAVIS
from dino_seg.images import load_image
from dino_seg.propagation import segment_sequence
from dino_seg.viz import overlay_labels


def _jf_from_note(note: str) -> tuple[float, float, float]:
    match = re.search(r"J&F (\d\.\d{3})\*\* \(J (\d\.\d{3}), F (\d\.\d{3})\)", note)
    assert match, note
    return tuple(float(v) for v in match.groups())


def test_davis_sequence_propagation_and_scores(cfg):
    update = video_tab.list_davis(None)
    assert update["choices"] == ["blackswan"] and update["value"] == "blackswan"
    first = video_tab.davis_first_frame(None, "blackswan")
    assert first.shape == (480, 854, 3)
    video, paths, slider, first_overlay, note = video_tab.run_video(
        video_tab.DAVIS_SOURCE, None, "blackswan", None, None, None, None, 4, 240, cfg)
    assert len(paths) == 4 and slider["maximum"] == 3
    assert video_tab.show_frame(paths, 2) == paths[2] and video_tab.show_frame(paths, 99) == paths[3]
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
    model, _ = model_cache.get_model(None, cfg)
    frames = davis.frame_paths(BUNDLED_DAVIS, "blackswan")[:4]
    gts = [davis.read_annotation(davis.annotation_dir(BUNDLED_DAVIS, "blackswan") / f"{f.stem}.png")
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
    for frame in davis.frame_paths(BUNDLED_DAVIS, "blackswan")[:5]:
        writer.write(cv2.resize(cv2.imread(str(frame)), (426, 240), interpolation=cv2.INTER_AREA))
    writer.release()
    gt = davis.read_annotation(davis.annotation_dir(BUNDLED_DAVIS, "blackswan") / "00000.png")
    return path, np.asarray(Image.fromarray(gt).resize((426, 240), Image.Resampling.NEAREST))


def test_uploaded_video_with_a_mask_of_another_scale(cfg, small_video, tmp_path):
    video_path, labels = small_video
    first, hint = video_tab.video_first_frame(str(video_path))
    assert first.shape == (240, 426, 3) and hint.startswith("First frame loaded (426x240)")
    mask_path = tmp_path / "mask.png"
    Image.fromarray(labels * 255).resize((854, 480), Image.Resampling.NEAREST).save(mask_path)  # 0/255, 2x
    video, paths, slider, _, note = video_tab.run_video(
        video_tab.UPLOAD_SOURCE, None, None, str(video_path), str(mask_path), None, None, 10, 240, cfg)
    assert len(paths) == 5 and slider["maximum"] == 4
    assert "uploaded mask of 854x480 resized to the frame's 426x240" in note
    assert "J&F" not in note  # no ground truth for an uploaded video


def test_drawn_first_frame_mask(cfg, small_video):
    video_path, labels = small_video
    layer = np.zeros((240, 426, 4), np.uint8)
    layer[labels == 1] = (255, 0, 0, 255)
    drawing = {"background": None, "layers": [layer], "composite": None}
    assert np.array_equal(video_tab.mask_from_drawing(drawing), (labels == 1).astype(np.uint8))
    _, paths, _, _, note = video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(video_path), None, drawing, None,
                                         3, 240, cfg)
    assert len(paths) == 3 and "3 frames" in note and "1 object(s)" in note


def test_video_input_errors_are_readable(cfg, small_video, tmp_path):
    video_path, labels = small_video
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((240, 426), np.uint8)).save(empty)
    with pytest.raises(gr.Error, match="first-frame mask is empty"):
        video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(video_path), str(empty), None, None, 3, 240, cfg)
    square = tmp_path / "square.png"
    Image.fromarray(np.full((200, 200), 255, np.uint8)).save(square)
    with pytest.raises(gr.Error, match="uploaded mask is 200x200 but the first frame is 426x240"):
        video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(video_path), str(square), None, None, 3, 240, cfg)
    text = tmp_path / "clip.mp4"
    text.write_text("this is not a video")
    with pytest.raises(gr.Error, match="video"):
        video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(text), str(square), None, None, 3, 240, cfg)
    with pytest.raises(gr.Error, match="upload a mask image or draw"):
        video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(video_path), None, None, None, 3, 240, cfg)
    with pytest.raises(gr.Error, match="DAVIS root not found"):
        video_tab.list_davis(str(tmp_path / "nowhere"))


def test_davis_run_is_scored_only_when_its_frames_have_ground_truth(cfg, tmp_path):
    root = make_davis(tmp_path / "davis", {"shapes": 5})
    _, _, _, _, note = video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 4, 64, cfg)
    assert re.search(r"\*\*J&F \d\.\d{3}\*\* .* over frames 1–2 \(first and last excluded", note)
    (root / "Annotations" / "480p" / "shapes" / "00002.png").unlink()
    _, _, _, _, note = video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 4, 64, cfg)
    assert "**J&F" not in note and "no J&F: the ground truth of these frames is incomplete" in note
