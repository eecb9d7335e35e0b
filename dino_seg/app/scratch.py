"""The app's temporary files: one scratch folder for its lifetime (a bounded number of request folders in it),
and the removal of what Gradio cached for the page."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

SCRATCH_KEEP = 24  # request folders kept in the app's temporary folder (older ones are deleted)


class Scratch:
    """Per-request folders inside one app-level temporary folder; only the newest `keep` are kept."""

    def __init__(self, keep: int = SCRATCH_KEEP, prefix: str = "dino-seg-app-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep
        self._folders: list[Path] = []
        self._lock = threading.Lock()
        self._count = 0
        atexit.register(self.cleanup)

    def new(self, kind: str) -> Path:
        with self._lock:
            self._count += 1
            folder = self.root / f"{self._count:06d}-{kind}"
            folder.mkdir(parents=True)
            self._folders.append(folder)
            while len(self._folders) > self.keep:
                shutil.rmtree(self._folders.pop(0), ignore_errors=True)
        return folder

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


SCRATCH = Scratch()
# Images shown in gr.Image outputs, written as files (see components.ImageView); many per request, so kept
# apart from the request folders, whose files the page may still need (the video tab's frames).
VIEWS = Scratch(keep=64, prefix="dino-seg-app-views-")


def cached_files(demo: gr.Blocks) -> set[str]:
    """The files Gradio has cached for this page so far: uploads, outputs and examples."""
    return {name for files in demo.temp_file_sets for name in files}


def remove_cached_files(names: set[str]) -> None:
    """Delete Gradio's cached files of this page and the hashed folders that held them. Gradio's own
    shutdown keeps examples and folders; the cache folder itself is shared with other Gradio apps, so only
    this page's files go (collect them with `cached_files` before closing the page: closing forgets them)."""
    cache = Path(get_upload_folder()).resolve()
    for name in names:
        path = Path(name)
        path.unlink(missing_ok=True)
        folder = path.parent.resolve()
        while folder != cache and cache in folder.parents:
            try:
                folder.rmdir()  # only when empty: another page may share the hashed folder
            except OSError:
                break
            folder = folder.parent
