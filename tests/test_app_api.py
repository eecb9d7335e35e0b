"""The page's API through gradio_client: every event has a stable name, and each endpoint answers from a
fresh session, without another endpoint having been called first."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from app_fixtures import cfg  # noqa: F401 - fixture
from dino_seg import davis
from dino_seg.app import weights_bar
from dino_seg.app.config import ASSETS, BUNDLED_DAVIS, AppConfig
from dino_seg.app.model_cache import RANDOM_WEIGHTS

ENDPOINTS = {"/attention", "/refresh_attention", "/discover", "/check_weights", "/upload_weights", "/list_davis",
             "/davis_first_frame", "/video_first_frame", "/switch_video_source", "/propagate", "/show_frame",
             "/open_results", "/sequence_scores", "/compare_frame", "/open_training", "/use_checkpoint"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(cfg) -> Iterator[Client]:
    demo = app.build_demo(cfg)
    demo.queue(default_concurrency_limit=2).launch(server_name="127.0.0.1", server_port=_free_port(),
                                                   prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_every_event_has_a_named_endpoint(client):
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == ENDPOINTS


def test_propagate_answers_from_a_fresh_session(client):
    # Before, the sequence dropdown only accepted the choices /list_davis had set in the same session, so
    # this call failed with "Value: blackswan is not in the list of choices: []".
    video, slider, _first, note = client.predict(  # the frame list is session state, not an API output
        "DAVIS sequence", str(BUNDLED_DAVIS), "blackswan", None, None, None, None, 3, 240, api_name="/propagate")
    assert slider["maximum"] == 2 and "3 frames" in note and "1 object(s)" in note and "J&F" in note
    if video is not None:  # None: this OpenCV writes no browser codec (the GIF is in the frame view)
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
    choices = weights_bar.weight_choices(AppConfig(weights=weights), ["/runs/a/checkpoint.pth"])
    assert choices.count(RANDOM_WEIGHTS) == 1 and "random" not in choices
    assert len(choices) == len(set(choices))
    assert choices[0] == (RANDOM_WEIGHTS if "random" in weights else weights)
    assert choices[1] == "/runs/a/checkpoint.pth"
