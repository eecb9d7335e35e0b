"""What the app's command line sets, the bundled assets and the limits every tab shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]
ASSETS = REPO_DIR / "assets"
BUNDLED_DAVIS = ASSETS / "davis"


@dataclass(frozen=True)
class AppConfig:
    """What the command line sets: default weights, the model flags and the folders the tabs open."""

    weights: str = "dino_vits16"
    arch: str | None = None
    patch_size: int | None = None
    davis_root: str = str(BUNDLED_DAVIS)
    results_dir: str = ""
    train_dir: str = ""
    device: str = "cpu"
