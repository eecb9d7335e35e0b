"""The app's temporary files: one scratch folder for its lifetime (request folders in it, evicted only when
nothing uses them), and the removal of what Gradio cached for the page."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

SCRATCH_KEEP = 24  # request folders kept beyond their grace time (older ones are deleted when unused)
SCRATCH_GRACE_S = 1800.0  # a folder used in the last half hour stays (the Video tab's frame slider reads it)


class Scratch:
    """Per-request folders inside one app-level temporary folder. A folder is deleted only when it is not held
    by a running job (`job`), was not used (`new`, `touch`) for `grace_s` seconds, and is not among the `keep`
    most recently used: a count alone deleted folders that a running propagation or the frame slider read."""

    def __init__(self, keep: int = SCRATCH_KEEP, prefix: str = "dino-seg-app-", grace_s: float = SCRATCH_GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep
        self.grace_s = grace_s
        self._clock = clock
        self._used: dict[Path, float] = {}  # folder -> last use, oldest first
        self._holders: dict[Path, int] = {}  # folder -> running jobs holding it
        self._lock = threading.Lock()
        self._count = 0
        atexit.register(self.cleanup)

    def new(self, kind: str) -> Path:
        """A new folder for one request (deleting folders that nothing uses any more)."""
        with self._lock:
            self._count += 1
            folder = self.root / f"{self._count:06d}-{kind}"
            folder.mkdir(parents=True)
            self._used[folder] = self._clock()
            self._evict()
        return folder

    @contextmanager
    def job(self, kind: str) -> Iterator[Path]:
        """A new folder that is never deleted while the job runs (however long, however many requests come)."""
        folder = self.new(kind)
        with self._lock:
            self._holders[folder] = self._holders.get(folder, 0) + 1
        try:
            yield folder
        finally:
            with self._lock:
                self._holders[folder] -= 1
                if not self._holders[folder]:
                    del self._holders[folder]
                if folder in self._used:
                    self._touch(folder)

    def touch(self, path: str | Path) -> bool:
        """Mark the folder holding `path` as used now; False when it is not (or no longer) one of ours."""
        path = Path(path)
        with self._lock:
            for folder in self._used:
                if folder == path or folder in path.parents:
                    self._touch(folder)
                    return True
        return False

    def _touch(self, folder: Path) -> None:
        del self._used[folder]
        self._used[folder] = self._clock()  # re-inserted: the dict stays in order of last use

    def _evict(self) -> None:
        now = self._clock()
        excess = len(self._used) - self.keep
        for folder, used in list(self._used.items()):  # least recently used first
            if excess <= 0 or now - used < self.grace_s:
                break
            if folder in self._holders:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            del self._used[folder]
            excess -= 1

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


SCRATCH = Scratch()
# Images shown in gr.Image outputs, written as files (see components.ImageView) that Gradio copies into its
# cache as soon as the handler returns; many per request, so kept apart from the request folders.
VIEWS = Scratch(keep=64, prefix="dino-seg-app-views-", grace_s=60.0)


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
