"""Which server paths the page may open: any on a loopback address; on a public one (--host not loopback, or
--share) only paths under the folders given on the command line, the bundled assets and this app's own uploads."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path

from dino_seg import davis

from ..errors import UserError
from .config import ASSETS, AppConfig


class PathNotAllowed(UserError):
    """A path input outside the folders a publicly served page shares."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): only this machine can reach the page."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def shared_roots(paths: list[str]) -> tuple[str, ...]:
    """The folders a public page may open: the given folders and files (command-line flags; empty ones
    skipped) and the bundled assets, resolved (symbolic links followed)."""
    roots = [ASSETS] + [Path(p).expanduser() for p in paths if p and p.strip()]
    return tuple(dict.fromkeys(str(p.resolve()) for p in roots))


def allowed_roots(host: str, share: bool, given: list[str]) -> tuple[str, ...] | None:
    """AppConfig.allowed_roots for a page served on `host` (and a public link if `share`): None (any path) on
    a loopback address, else the existing folders and files among `given` (the command line's path flags)."""
    if not share and is_loopback(host):
        return None
    return shared_roots([p for p in given if p and Path(p).expanduser().exists()])


def private_upload_folder() -> str:
    """A fresh folder for this app's uploads and Gradio's cached outputs, inside Gradio's usual cache root, made
    Gradio's upload folder for this process (GRADIO_TEMP_DIR): the cache root is shared by every Gradio app on
    the machine, so a public page must accept uploads only from its own folder. Call before building the page."""
    base = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    os.makedirs(base, exist_ok=True)
    folder = str(Path(tempfile.mkdtemp(prefix="dino-seg-app-uploads-", dir=base)).resolve())
    os.environ["GRADIO_TEMP_DIR"] = folder
    return folder


def check_path(value: str, cfg: AppConfig, what: str) -> str:
    """`value` when the page may open it (see the module's docstring); PathNotAllowed otherwise. The answer is
    the same whether the path exists or not, so that a visitor cannot probe the server's files. An empty value
    is refused: it would be read as the server's working directory."""
    if not value or not value.strip():
        raise PathNotAllowed(f"no {what} given")
    if cfg.allowed_roots is None:
        return value
    path = Path(value).expanduser().resolve()  # `..` and symbolic links cannot lead out of a shared folder
    roots = [ASSETS.resolve(), *(Path(r) for r in cfg.allowed_roots)]
    roots += [Path(cfg.upload_dir).resolve()] if cfg.upload_dir else []
    if any(path == root or root in path.parents for root in roots):
        return value
    raise PathNotAllowed(f"{what} {value!r} is not in a folder this server shares: on a public address the app "
                         "opens only the folders given on its command line (--davis_root, --results_dir, "
                         "--train_dir, --pretrained_weights) and its own uploads")


def sequence_name(name: str) -> str:
    """A sequence is a folder's name: a name with a path separator or `..` could open folders elsewhere."""
    name = name.strip()
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise PathNotAllowed(f"sequence {name!r} is not a folder name")
    return name


def check_sequence(root: str, name: str, cfg: AppConfig) -> str:
    """A sequence name of a DAVIS root whose frame and annotation folders the page may open: the name is a
    folder name, and each folder, resolved (a symbolic link may point anywhere), is in a shared folder."""
    name = sequence_name(name)
    for folder in (Path(root) / "JPEGImages" / "480p" / name, davis.annotation_dir(root, name)):
        check_path(str(folder), cfg, f"sequence {name!r}")
    return name
