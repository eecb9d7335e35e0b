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
    # Only paths under these folders, the bundled assets and this app's uploads (a public address: see
    # dino_seg/app/paths.py); None: any server path (a loopback address). The default fails closed: a page
    # built without the command line's answer opens nothing else.
    allowed_roots: tuple[str, ...] | None = ()
    # This app's own upload folder (paths.private_upload_folder): the only uploads a public page opens.
    upload_dir: str | None = None
