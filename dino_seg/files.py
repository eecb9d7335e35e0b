"""Atomic file writes: a result is either complete on disk or absent, never half-written."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

# Temporary files of the writers below are named `.<final name>.<random>.dino-tmp<suffix>` (the final
# suffix is kept last because some writers, e.g. OpenCV's video writer, pick the format from it):
# `remove_stale_temp` recognises them by this marker.
TEMP_MARKER = ".dino-tmp"


class NoSpaceError(OSError):
    """The disk filled up while writing a file; the message is one line naming the file."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror


def temp_path_for(path: Path) -> Path:
    """Create (empty, exclusively) and return a temporary file beside `path`.

    Unlike tempfile.mkstemp (mode 0600), the file is created with mode 0666 filtered by the umask, so
    that after the rename the result has the permissions any other file the user writes gets.
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_MARKER}{path.suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def is_no_space(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a full disk (ENOSPC, or EDQUOT: quota exceeded)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


class AtomicFile:
    """A temporary file beside `path` (same suffix, hidden name) that replaces `path` in one rename on
    `commit`, or disappears on `discard`: for writers that stay open across calls (video streams)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Same folder, so the rename never crosses file systems; same suffix, so writers that pick the
        # format from the name (OpenCV, PIL, matplotlib) write the right one.
        self.tmp = temp_path_for(self.path)

    def commit(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        if self.tmp.exists():
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A full disk while writing raises NoSpaceError naming `path`; the previous `path`, if any, is intact.
    """
    target = AtomicFile(path)
    try:
        yield target.tmp
        target.commit()
    except Exception as err:
        if is_no_space(err):
            raise NoSpaceError(target.path) from None
        raise
    finally:
        target.discard()


class _WriteWatcher:
    """A binary file wrapper that remembers the OSError of a failed write: torch.save turns it into a
    RuntimeError ("enforce fail at inline_container.cc") that no longer says the disk is full."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_binary(path: str | Path, fsync: bool = False) -> Iterator[IO[bytes]]:
    """An open binary file whose content replaces `path` in one rename once the block succeeds.

    Write errors of the file, even when a library re-raises them as another type, come out as
    NoSpaceError (full disk) or the original OSError.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as raw:
            f = _WriteWatcher(raw)
            try:
                yield f  # type: ignore[misc]
                raw.flush()
                if fsync:
                    os.fsync(raw.fileno())
            except Exception as err:
                if f.error is not None and f.error is not err:
                    raise f.error from None
                raise


def remove_stale_temp(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files our writers left in `folder` when a process was killed mid-write
    (kill -9, power loss); returns what was removed. Call it when a run starts, before writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f"**/.*{TEMP_MARKER}*" if recursive else f".*{TEMP_MARKER}*"
    removed = []
    for p in folder.glob(pattern):
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def save_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a uint8 array as PNG (RGB, grayscale, or indexed with `palette` (256, 3))."""
    array = np.ascontiguousarray(array)
    if palette is not None:
        if array.ndim != 2 or array.dtype != np.uint8:
            raise ValueError(f"{path}: an indexed PNG needs a 2-D uint8 label array, got {array.dtype} {array.shape}")
        img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        img.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    else:
        img = Image.fromarray(array)
    with atomic_binary(path) as f:
        img.save(f, format="PNG")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """Write a NumPy array as .npy."""
    with atomic_binary(path) as f:
        np.save(f, array)


def save_text(path: str | Path, text: str) -> None:
    """Write a text file (CSV, JSON)."""
    with atomic_binary(path) as f:
        f.write(text.encode("utf-8"))


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's content (read in chunks: checkpoints can be large)."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


DIGEST_CACHE_FILE = "digests.json"
_DIGEST_CACHE_LIMIT = 1000  # entries kept (the most recent); a file's entry is a few hundred bytes


def cache_dir() -> Path:
    """Where dino-seg keeps small caches: $DINO_SEG_CACHE_DIR, else $XDG_CACHE_HOME/dino-seg, else ~/.cache/dino-seg."""
    if os.environ.get("DINO_SEG_CACHE_DIR"):
        return Path(os.environ["DINO_SEG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dino-seg"


def cached_file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """file_digest, remembered in cache_dir()/digests.json under the file's resolved path, size and mtime:
    a checkpoint hashed once is not read again until it changes (hashing ViT-B takes seconds). A cache that
    cannot be read or written is ignored (the digest is then computed each time)."""
    path = Path(path).expanduser().resolve()
    st = path.stat()
    key = f"{algorithm} {st.st_size} {st.st_mtime_ns} {path}"
    store = cache_dir() / DIGEST_CACHE_FILE
    try:
        entries = json.loads(store.read_text())
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    if isinstance(entries.get(key), str):
        return entries[key]
    digest = file_digest(path, algorithm)
    entries.pop(key, None)
    entries[key] = digest  # newest last: trimming drops the oldest
    with contextlib.suppress(OSError):
        store.parent.mkdir(parents=True, exist_ok=True)
        save_text(store, json.dumps(dict(list(entries.items())[-_DIGEST_CACHE_LIMIT:]), indent=0) + "\n")
    return digest
