"""The Video tab's handlers with tiny random weights: propagation equals the library's, J&F is recomputed; the
attention video is the library's attention images."""

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
from dino_seg.video import iter_video
from dino_seg.video_attention import attention_frames, folder_frames
from dino_seg.viz import overlay_labels


def _jf_from_note(note: str) -> tuple[float, float, float]:
    match = re.search(r"J&F (\d\.\d{3})\*\* \(J (\d\.\d{3}), F (\d\.\d{3})\)", note)
    assert match, note
    return tuple(float(v) for v in match.groups())


def test_davis_sequence_propagation_and_scores(cfg, video_codec):
    update = video_tab.list_davis(None, cfg)
    assert update["choices"] == ["blackswan"] and update["value"] == "blackswan"
    first = video_tab.davis_first_frame(None, "blackswan", cfg)
    assert first.shape == (480, 854, 3)
    video, paths, slider, first_overlay, note = video_tab.run_video(
        video_tab.DAVIS_SOURCE, None, "blackswan", None, None, None, None, 4, 240, cfg)
    assert len(paths) == 4 and slider["maximum"] == 3
    assert video_tab.show_frame(paths, 2) == paths[2] and video_tab.show_frame(paths, 99) == paths[3]
    assert "only the first 4 of 12 frames are used" in note and "240-pixel short side" in note
    assert (video is None) == (video_codec == "gif")
    if video_codec == "gif":  # no browser-playable codec in this OpenCV: the GIF goes to the frame view
        assert Path(first_overlay).suffix == ".gif" and "animated GIF" in note
        with Image.open(first_overlay) as gif:
            assert gif.n_frames == 4
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
    first, hint = video_tab.video_first_frame(str(video_path), cfg)
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
        video_tab.list_davis(str(tmp_path / "nowhere"), cfg)


def test_davis_run_is_scored_only_when_its_frames_have_ground_truth(cfg, tmp_path):
    root = make_davis(tmp_path / "davis", {"shapes": 5})
    _, _, _, _, note = video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 4, 64, cfg)
    assert re.search(r"\*\*J&F \d\.\d{3}\*\* .* over frames 1–2 \(first and last excluded", note)
    (root / "Annotations" / "480p" / "shapes" / "00002.png").unlink()
    _, _, _, _, note = video_tab.run_video(video_tab.DAVIS_SOURCE, str(root), "shapes", None, None, None, None, 4, 64, cfg)
    assert "**J&F" not in note and "no J&F: the ground truth of these frames is incomplete" in note


def test_truncated_upload_says_how_many_frames_could_be_read(cfg, tmp_path, monkeypatch):
    # A 10-frame Motion-JPEG AVI (OpenCV writes it without any codec library) cut in half: its header still
    # announces 10 frames, 4 can be decoded.
    frames = davis.frame_paths(BUNDLED_DAVIS, "blackswan")[:10]
    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 90))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.resize(cv2.imread(str(frame)), (160, 90), interpolation=cv2.INTER_AREA))
    writer.release()
    # Uploads sit in Gradio's cache under a long hashed folder: put the cut file there.
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    upload = cache / ("ab" * 32) / "holiday.avi"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    capture = cv2.VideoCapture(str(upload))
    announced, readable = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while capture.read()[0]:
        readable += 1
    capture.release()
    assert announced == 10 and 2 <= readable < 10

    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((30, 40), 255, np.uint8), ((30, 30), (60, 60)))).save(mask)
    _, paths, _, _, note = video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(upload), str(mask), None,
                                               None, 20, 240, cfg)
    assert len(paths) == readable
    assert (f"- note: only {readable} of the 10 frames its header announces could be read: the file "
            "holiday.avi is truncated or damaged") in note
    assert "cap 20" not in note and str(cache) not in note

    # The cap still speaks when it is what cut the video short.
    _, paths, _, _, note = video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(full), str(mask), None,
                                               None, 3, 240, cfg)
    assert len(paths) == 3 and "- note: only the first 3 of 10 frames are used (cap 3)" in note
    assert "truncated" not in note


def test_errors_name_uploads_by_file_name_only(cfg, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    upload = cache / ("cd" * 32) / "clip.mp4"
    upload.parent.mkdir(parents=True)
    upload.write_text("this is not a video")
    with pytest.raises(gr.Error) as raised:
        video_tab.run_video(video_tab.UPLOAD_SOURCE, None, None, str(upload), None, None, None, 3, 240, cfg)
    message = raised.value.message
    assert message.startswith("clip.mp4: ") and str(cache) not in message
    # The console gets the same single line, not a traceback.
    assert capsys.readouterr().err == f"run_video: {message}\n"

def test_attention_video_of_a_davis_sequence(cfg, video_codec):
    video, masks, note = video_tab.run_attention_video(
        video_tab.DAVIS_SOURCE, None, "blackswan", None, None, 3, 240, "heads", 0.6, cfg)
    assert "3 frames" in note and "short side 240 px" in note and "one per head" in note
    assert "only the first 3 of 12 frames are used" in note
    assert (video is None) == (video_codec == "gif")
    if video_codec == "gif":  # no browser-playable codec in this OpenCV build
        assert "no browser-playable video codec" in note and masks is None
        return
    model, _ = model_cache.get_model(None, cfg)
    frames = davis.frame_paths(BUNDLED_DAVIS, "blackswan")[:3]
    expected = [r.attention_rgba()[..., :3] for r in attention_frames(model, folder_frames(frames), resize=[240])]
    decoded = list(iter_video(video))
    assert len(decoded) == 3 and decoded[0].shape == expected[0].shape == (240, 416, 3)  # 427 cropped to 416
    for t, frame in enumerate(decoded):
        errors = [np.abs(frame.astype(int) - e).mean() for e in expected]
        assert errors[t] < 6 and int(np.argmin(errors)) == t  # lossy codec, but this frame's attention
    assert len(list(iter_video(masks))) == 3


def test_attention_video_of_an_upload(cfg, small_video):
    video_path, _ = small_video
    video, masks, note = video_tab.run_attention_video(
        video_tab.UPLOAD_SOURCE, None, None, str(video_path), None, 10, 240, "none", 0.6, cfg)
    assert masks is None and "5 frames" in note and "only the first" not in note
    if video is not None:
        assert len(list(iter_video(video))) == 5
    with pytest.raises(gr.Error, match="Upload a video file first"):
        video_tab.run_attention_video(video_tab.UPLOAD_SOURCE, None, None, None, None, 3, 240, "mean", 0.6, cfg)


def test_attention_video_errors_are_one_line_without_server_paths(cfg, tmp_path):
    text = tmp_path / "clip.mp4"
    text.write_text("this is not a video")
    with pytest.raises(gr.Error) as info:
        video_tab.run_attention_video(video_tab.UPLOAD_SOURCE, None, None, str(text), None, 3, 240, "mean", 0.6, cfg)
    assert info.value.message == "clip.mp4: not a readable video file (try MP4, WebM or AVI)"


def test_switching_mode_shows_one_set_of_controls():
    labels = [u["visible"] for u in video_tab.switch_video_mode(video_tab.PROPAGATION_MODE)]
    attention = [u["visible"] for u in video_tab.switch_video_mode(video_tab.ATTENTION_MODE)]
    assert labels == [True] * 4 + [False] * 3 and attention == [not v for v in labels]


def test_writing_a_video_prints_nothing(tmp_path, capfd):
    # Probing H.264 printed FFmpeg's hardware-encoder errors and WebM printed OpenCV's tag warning, even when the
    # video was fine; the codec is now chosen without H.264 and OpenCV's output held back.
    from dino_seg import video as video_lib

    video_lib._video_codecs.cache_clear()  # the probe itself must be quiet too
    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(3)]
    path = video_lib.write_video(frames, tmp_path / "clip", 10)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert path.suffix in (".webm", ".gif")  # VP8 when this OpenCV writes it (pip's does), else the GIF
    if path.suffix == ".webm":
        capture = cv2.VideoCapture(str(path))
        count = 0
        while capture.read()[0]:
            count += 1
        assert count == 3


def test_quiet_opencv_passes_real_errors_on(capfd):
    import os

    from dino_seg.video import quiet_opencv

    with quiet_opencv():
        os.write(2, b"OpenCV: FFMPEG: tag 0x30385056/'VP80' is not supported with codec id 139 and format "
                    b"'webm / WebM'\nsomething really failed\n")
    assert capfd.readouterr().err == "something really failed\n"
