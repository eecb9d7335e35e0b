"""The page's API through gradio_client: every event has a stable name, and each endpoint answers from a
fresh session, without another endpoint having been called first."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from app_fixtures import cfg  # noqa: F401 - fixture
from dino_seg import davis
from dino_seg.app import video as video_tab
from dino_seg.app import weights_bar
from dino_seg.app.config import ASSETS, BUNDLED_DAVIS, AppConfig
from dino_seg.app.model_cache import RANDOM_WEIGHTS
from dino_seg.app.serve import queue
from ports import free_port

ENDPOINTS = {"/attention", "/refresh_attention", "/discover", "/check_weights", "/upload_weights", "/list_davis",
             "/davis_first_frame", "/video_first_frame", "/switch_video_source", "/propagate", "/show_frame",
             "/attention_video", "/switch_video_mode", "/compare",
             "/open_results", "/sequence_scores", "/compare_frame", "/open_training", "/use_checkpoint"}


@pytest.fixture(scope="module")
def client(cfg) -> Iterator[Client]:
    demo = app.build_demo(cfg)
    queue(demo).launch(server_name="127.0.0.1", server_port=free_port(),
                                                   prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_every_event_has_a_named_endpoint(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == ENDPOINTS


def test_attention_video_answers_from_a_fresh_session(client, video_codec):
    video, masks, note = client.predict("DAVIS sequence", str(BUNDLED_DAVIS), "blackswan", None, None, 2, 240,
                                        "mean", 0.6, api_name="/attention_video")
    assert "2 frames" in note and "keeping 0.6 of the attention mass" in note
    assert (video is None) == (video_codec == "gif")  # the GIF fallback: no video to play
    if video_codec == "gif":
        assert "no browser-playable video codec" in note
    else:
        for out in (video, masks):
            assert Path(out if isinstance(out, str) else out["video"]).suffix in (".mp4", ".webm")


def test_propagate_answers_from_a_fresh_session(client, video_codec):
    # Before, the sequence dropdown only accepted the choices /list_davis had set in the same session, so
    # this call failed with "Value: blackswan is not in the list of choices: []".
    video, slider, _first, note = client.predict(  # the frame list is session state, not an API output
        "DAVIS sequence", str(BUNDLED_DAVIS), "blackswan", None, None, None, None, 3, 240, api_name="/propagate")
    assert slider["maximum"] == 2 and "3 frames" in note and "1 object(s)" in note and "J&F" in note
    assert (video is None) == (video_codec == "gif")
    if video_codec == "gif":  # the GIF is in the frame view
        assert "animated GIF" in note
    else:
        path = video if isinstance(video, str) else video["video"]
        assert Path(path).suffix in (".mp4", ".webm")


def test_results_and_training_endpoints_answer_from_a_fresh_session(client, cfg, tmp_path):
    # Predictions equal to the ground truth: frame 5's comparison shows the same overlay twice.
    out = tmp_path / "results"
    gt_dir = davis.annotation_dir(BUNDLED_DAVIS, "blackswan")
    (out / "blackswan").mkdir(parents=True)
    for png in sorted(gt_dir.glob("*.png")):
        (out / "blackswan" / png.name).write_bytes(png.read_bytes())
    gt, pred, note = client.predict(str(out), str(BUNDLED_DAVIS), "blackswan", 5, api_name="/compare_frame")
    assert note == "blackswan frame 00005"
    assert np.array_equal(np.asarray(Image.open(gt)), np.asarray(Image.open(pred)))
    _chart, slider = client.predict(str(out), str(BUNDLED_DAVIS), "blackswan", api_name="/sequence_scores")
    assert (slider["value"], slider["maximum"]) == (1, 11)  # frame 1, the first scored one, of 12

    weights, banner = client.predict(cfg.weights, api_name="/use_checkpoint")  # (the tab switch is no output)
    assert weights["value"] == cfg.weights and banner == "Weights: **vit_tiny16.pth (vit_tiny/16)** on cpu"


def test_attention_answers_from_a_fresh_session(client):
    heat, masks, files, note = client.predict(handle_file(str(ASSETS / "images" / "blackswan.jpg")), None, 128,
                                              0.6, api_name="/attention")
    assert len(heat) == 3 and len(masks) == 4 and re.match(r"\*\*vit_tiny16\.pth", note)


@pytest.mark.parametrize("weights", ["random", RANDOM_WEIGHTS, "dino_vits8"])
def test_random_weights_appear_once_in_the_choices(weights):
    choices = [value for _, value in weights_bar.weight_choices(AppConfig(weights=weights),
                                                                 ["/runs/a/checkpoint.pth"])]
    assert choices.count(RANDOM_WEIGHTS) == 1 and "random" not in choices
    assert len(choices) == len(set(choices))
    assert choices[0] == (RANDOM_WEIGHTS if "random" in weights else weights)
    assert choices[1] == "/runs/a/checkpoint.pth"


def test_uploaded_weights_are_labelled_by_their_file_name(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    upload = tmp_path / "gradio" / ("ab" * 32) / "mine.pth"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(Path(cfg.weights).read_bytes())
    update, banner = weights_bar.add_uploaded_weights(str(upload), cfg)
    assert update["value"] == str(upload) and ("mine.pth (uploaded)", str(upload)) in update["choices"]
    assert (Path(cfg.weights).name, cfg.weights) not in update["choices"]  # the person's own paths stay whole
    assert (cfg.weights, cfg.weights) in update["choices"]
    assert banner == "Weights: **mine.pth (vit_tiny/16)** on cpu"


# --- the queue: what the hostile-input probe showed, kept as tests

SWAN_FILE = str(ASSETS / "images" / "blackswan.jpg")
PROPAGATE = ("DAVIS sequence", str(BUNDLED_DAVIS), "blackswan", None, None, None, None, 2, 240)


def test_eight_concurrent_attention_requests_are_all_answered(client):
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    jobs = [client.submit(handle_file(SWAN_FILE), None, 128, t, api_name="/attention") for t in thresholds]
    for threshold, job in zip(thresholds, jobs):
        heat, masks, files, note = job.result(timeout=300)
        assert len(heat) == 3 and len(masks) == 4
        # Each answer is its own request's: its masks are those of its threshold.
        assert {Path(f).name for f in files} >= {f"masks_th{threshold:.2f}.npy", f"masks_th{threshold:.2f}_png.zip"}
        assert f"masks keep {threshold:.0%}" in note


def test_video_jobs_run_one_at_a_time(client, monkeypatch):
    real, lock, active, peak = video_tab.segment_sequence, threading.Lock(), [0], [0]

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.5)  # long enough for the other job to start if the queue let it
            yield from real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(video_tab, "segment_sequence", counted)
    jobs = [client.submit(*PROPAGATE, api_name="/propagate") for _ in range(3)]
    notes = [job.result(timeout=300)[-1] for job in jobs]
    assert all("2 frames" in note for note in notes)
    assert peak[0] == 1


def test_attention_is_answered_while_a_video_job_runs(client, monkeypatch):
    real, started, release = video_tab.segment_sequence, threading.Event(), threading.Event()

    def held(*args, **kwargs):
        started.set()
        release.wait(timeout=120)  # the propagation holds its queue slot until the attention answer came
        yield from real(*args, **kwargs)

    monkeypatch.setattr(video_tab, "segment_sequence", held)
    video = client.submit(*PROPAGATE, api_name="/propagate")
    try:
        assert started.wait(timeout=120)
        attention = client.submit(handle_file(SWAN_FILE), None, 128, 0.6, api_name="/attention")
        heat, masks, _, _ = attention.result(timeout=120)  # a TimeoutError if it waited for the video job
        assert len(masks) == 4 and not video.done()
    finally:
        release.set()
    assert "2 frames" in video.result(timeout=300)[-1]


def test_the_frame_cap(client, cfg, monkeypatch, capsys):
    # The page's slider stops at the cap and the API refuses more, in one line on the console too; the
    # handler caps what it is given.
    refusal = (f"Frames: Value {video_tab.MAX_VIDEO_FRAMES + 1} is greater than maximum value "
               f"{video_tab.MAX_VIDEO_FRAMES}.")
    capsys.readouterr()
    with pytest.raises(Exception, match=re.escape(refusal)):
        client.predict(*PROPAGATE[:7], video_tab.MAX_VIDEO_FRAMES + 1, 240, api_name="/propagate")
    err = capsys.readouterr().err
    assert f"input: {refusal}" in err.splitlines() and "Traceback" not in err
    choices = "Short side (px): Value: 100 (type: <class 'int'>) is not in the list of choices: [240, 360, 480, 720, 960]"
    with pytest.raises(Exception, match=re.escape(choices)):
        client.predict(*PROPAGATE[:7], 4, 100, api_name="/propagate")
    monkeypatch.setattr(video_tab, "MAX_VIDEO_FRAMES", 3)
    _, paths, slider, _, note = video_tab.run_video(*PROPAGATE[:7], 999, 240, cfg)
    assert len(paths) == 3 and slider["maximum"] == 2
    assert "- note: only the first 3 of 12 frames are used (cap 3)" in note
    _, paths, _, _, _ = video_tab.run_video(*PROPAGATE[:7], 1, 240, cfg)
    assert len(paths) == 2  # propagation needs two frames at least
