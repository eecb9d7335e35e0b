"""Shared fixtures: tiny seeded DINO weights made on the spot (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dino_seg.models import build_backbone


@pytest.fixture(scope="session")
def tiny_vit_weights(tmp_path_factory) -> Path:
    """A backbone-only state dict of a seeded random vit_tiny/16, like dino_deitsmall16_pretrain.pth."""
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", 16)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny16.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """Caches (the provenance digests) go to a temporary folder, never to the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DINO_SEG_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(params=["codec", "gif"])
def video_codec(request, monkeypatch) -> str:
    """Runs a test once per branch of the video writers: "codec", the build's best browser-playable codec, and
    "gif", the animated-GIF fallback of an OpenCV build without one (forced by emptying the codec list)."""
    from dino_seg import video

    if request.param == "gif":
        monkeypatch.setattr(video, "_video_codecs", lambda: ())
    elif not video._video_codecs():
        pytest.skip("this OpenCV build writes no browser-playable codec: only the GIF branch can run")
    return request.param
