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
