"""What the app's handler tests share: tiny-weights configuration, fresh caches, the swan image."""

from __future__ import annotations

from pathlib import Path

import pytest

from dino_seg.app import attention as attention_tab
from dino_seg.app.config import ASSETS, AppConfig

SWAN = ASSETS / "images" / "blackswan.jpg"
SIZE = 96  # short side of the attention tests: 6 x 10 patches keep them fast


@pytest.fixture(scope="module")
def cfg(tiny_vit_weights: Path) -> AppConfig:
    return AppConfig(weights=str(tiny_vit_weights), arch="vit_tiny", patch_size=16, device="cpu", allowed_roots=None)


@pytest.fixture()
def fresh_cache():
    """Cold image-pass and discovery caches (a test counting forward passes starts from none)."""
    for cache in (attention_tab.PASS_CACHE, attention_tab.DISCOVERY_CACHE):
        cache.clear()
    yield
    for cache in (attention_tab.PASS_CACHE, attention_tab.DISCOVERY_CACHE):
        cache.clear()
