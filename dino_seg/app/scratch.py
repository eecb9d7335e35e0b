"""The app's scratch space: one temporary folder for its lifetime, with a bounded number of request folders."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path

SCRATCH_KEEP = 24  # request folders kept in the app's temporary folder (older ones are deleted)


class Scratch:
    """Per-request folders inside one app-level temporary folder; only the newest `keep` are kept."""

    def __init__(self, keep: int = SCRATCH_KEEP) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dino-seg-app-"))
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
