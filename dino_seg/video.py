"""Reading and writing video files: frames streamed from a file, browser-playable videos written atomically."""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import names
from .errors import UserError
from .files import AtomicFile

MAX_SHORT_SIDE = 480  # uploaded videos are downscaled to this before propagation (the reference's 480p)
DEFAULT_FPS = names.DEFAULT_FPS


# The GIF fallback keeps every frame in memory until `close` (Pillow writes a GIF in one go): refused above this
# many bytes of frames (PIL holds RGB at 4 bytes a pixel), about 650 frames at 854 x 480.
GIF_MAX_BYTES = 1 << 30


class VideoError(UserError):
    """A video file that cannot be opened or decoded, or frames that cannot be written; one line naming the file."""


def read_video_frames(video_path: str | Path, out_dir: Path, max_frames: int,
                      max_short_side: int = MAX_SHORT_SIDE) -> tuple[list[Path], float, list[str]]:
    """Decode up to `max_frames` frames of a video file to JPEGs in `out_dir`, downscaled to `max_short_side`.

    Returns the JPEG paths, the frame rate (DEFAULT_FPS when the file gives none) and notes that say what
    was downscaled or left out. Uploads sit under long hashed paths, so errors name the file only."""
    capture = _open(video_path, Path(video_path).name)
    fps, total = _rate_and_count(capture)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    notes: list[str] = []
    try:
        while len(paths) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            h, w = frame.shape[:2]
            if min(h, w) > max_short_side:
                scale = max_short_side / min(h, w)
                frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                if not paths:
                    notes.append(f"frames of {w}x{h} downscaled to {frame.shape[1]}x{frame.shape[0]}")
            path = out_dir / f"{len(paths):05d}.jpg"
            cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            paths.append(path)
    finally:
        capture.release()
    if not paths:
        raise VideoError(f"{Path(video_path).name}: no frame could be decoded: not a video file?")
    if total > len(paths):
        notes.append(f"only the first {len(paths)} of {total} frames are used (cap {max_frames})")
    return paths, fps, notes


def _open(video_path: str | Path, name: str) -> cv2.VideoCapture:
    if not Path(video_path).is_file():
        raise VideoError(f"{name}: no such video file")
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{name}: not a readable video file (try MP4, WebM or AVI)")
    return capture


def _rate_and_count(capture: cv2.VideoCapture) -> tuple[float, int]:
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    return (fps if 0 < fps < 121 else DEFAULT_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)


def video_info(video_path: str | Path, name: str | None = None) -> tuple[float, int]:
    """(frame rate, frame count from the header: 0 when unknown) of a video file; DEFAULT_FPS when the
    container gives no plausible rate. `name` is how errors call the file (default: its path)."""
    capture = _open(video_path, name or str(video_path))
    try:
        return _rate_and_count(capture)
    finally:
        capture.release()


def iter_video(video_path: str | Path, max_frames: int | None = None, name: str | None = None) -> Iterator[np.ndarray]:
    """Decode a video file's frames one at a time as RGB (H, W, 3) uint8: memory does not grow with its length."""
    name = name or str(video_path)
    capture = _open(video_path, name)
    count = 0
    try:
        while max_frames is None or count < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    if count == 0:
        raise VideoError(f"{name}: no frame could be decoded: not a video file?")


class VideoWriter:
    """RGB frames streamed into a video file that takes its final name only when `close` succeeds.

    The first frame fixes the size (later frames of another size are resized to it) and the codec: the
    first of `codecs` ((fourcc, suffix) pairs; default: the browser-playable ones this OpenCV build has)
    that opens, else an animated GIF (the only case that keeps frames in memory until `close`: a clip above
    `gif_max_bytes` of frames is refused with a VideoError as the frame that crosses it is written)."""

    def __init__(self, out_stem: str | Path, fps: float,
                 codecs: tuple[tuple[str, str], ...] | None = None, gif_max_bytes: int = GIF_MAX_BYTES) -> None:
        self.out_stem = Path(out_stem)
        self.fps = float(fps)
        self.gif_max_bytes = gif_max_bytes
        self.codecs = _video_codecs() if codecs is None else codecs
        self.fourcc: str | None = None  # the codec written, "GIF" for the fallback
        self.count = 0
        self.path: Path | None = None  # the final file, once closed
        self._size: tuple[int, int] | None = None  # (W, H)
        self._target: AtomicFile | None = None
        self._writer: cv2.VideoWriter | None = None
        self._gif: list[Image.Image] = []

    def _open(self, w: int, h: int) -> None:
        for fourcc, suffix in self.codecs:
            target = AtomicFile(self.out_stem.with_suffix(suffix))
            with quiet_opencv():
                writer = cv2.VideoWriter(str(target.tmp), cv2.VideoWriter_fourcc(*fourcc), self.fps, (w, h))
                opened = writer.isOpened()
                if not opened:
                    writer.release()
            if opened:
                self._target, self._writer, self.fourcc = target, writer, fourcc
                return
            target.discard()
        self._target, self.fourcc = AtomicFile(self.out_stem.with_suffix(".gif")), "GIF"

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB (H, W, 3) uint8 frame."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise VideoError(f"{self.out_stem.name}: expected RGB frames (H, W, 3), got shape {frame.shape}")
        if self._size is None:
            self._size = (frame.shape[1], frame.shape[0])
            self._open(*self._size)
        elif (frame.shape[1], frame.shape[0]) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        if self._writer is not None:
            self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        else:
            held = (len(self._gif) + 1) * self._size[0] * self._size[1] * 4
            if held > self.gif_max_bytes:
                raise VideoError(
                    f"{self.out_stem.name}: this OpenCV build does not write VP8, and the GIF fallback "
                    f"holds every frame in memory: {len(self._gif) + 1} frames of {self._size[0]}x{self._size[1]} "
                    f"pass its cap of {self.gif_max_bytes / 2**20:.0f} MB; use fewer or smaller frames, or an "
                    "OpenCV with a video codec (opencv-python-headless from PyPI writes VP8)")
            self._gif.append(Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)))
        self.count += 1

    def close(self) -> Path:
        """Finish the file and give it its final name (replacing any older one); return that path."""
        if self._target is None:
            raise VideoError(f"{self.out_stem.name}: no frames to write")
        try:
            if self._writer is not None:
                self._writer.release()
                self._writer = None
            else:
                self._gif[0].save(self._target.tmp, format="GIF", save_all=True, append_images=self._gif[1:],
                                  duration=round(1000 / self.fps), loop=0)
                self._gif = []
            self.path = self._target.commit()
            return self.path
        finally:
            self._target.discard()

    def discard(self) -> None:
        """Drop what was written: no file appears, the temporary one is removed."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._target is not None:
            self._target.discard()
        self._gif = []

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # An error (or Ctrl-C) while frames are produced leaves no partial video under the final name.
        if exc_type is None:
            self.close()
        else:
            self.discard()


def write_video(frames: Iterable[np.ndarray], out_stem: Path, fps: float,
                codecs: tuple[tuple[str, str], ...] | None = None) -> Path:
    """RGB frames as a video that Chromium plays: VP8 WebM if OpenCV writes it, else an animated GIF.

    `codecs` overrides the (fourcc, suffix) pairs probed from this OpenCV build; the suffix replaces
    `out_stem`'s. `frames` may be a generator: frames are written as they come, to a temporary file
    beside the target that takes the final name only once the video is complete. Returns the file written."""
    with VideoWriter(out_stem, fps, codecs) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.path


def format_codecs(video_format: str | None) -> tuple[tuple[str, str], ...]:
    """The (fourcc, suffix) pairs to try for a container: None is the browser-playable default; "mp4" is
    MPEG-4 part 2 as video_generation.py writes ('MP4V', which browsers do not play; H.264 is not asked for:
    see BROWSER_CODECS); "avi" is Xvid as video_generation.py writes; "webm" is VP8."""
    if video_format is None:
        return _video_codecs()
    if video_format == "mp4":
        return (("mp4v", ".mp4"),)
    if video_format == "avi":
        return (("XVID", ".avi"),)
    if video_format == "webm":
        return (("VP80", ".webm"),)
    raise UserError(f"--video_format: expected mp4, webm or avi, got {video_format!r}")


def plays_in_browser(fourcc: str | None) -> bool:
    """Whether a codec written by VideoWriter plays in Chromium (H.264, VP8 or the GIF fallback)."""
    return fourcc in ("avc1", "VP80", "GIF")


# Tried in this order: VP8 in WebM (Chromium plays it, pip's OpenCV writes it). H.264 ('avc1') is not tried:
# asking FFmpeg for it probes hardware encoders (h264_v4l2m2m ...), which print errors on every machine without
# one, and pip's OpenCV has no software H.264 encoder anyway.
BROWSER_CODECS = (("VP80", ".webm"),)
# What OpenCV prints (a plain fprintf, not its logging) for any fourcc in WebM, whose muxer has no tag table,
# before it writes the requested codec anyway: harmless, so dropped.
_HARMLESS = re.compile(r"^OpenCV: FFMPEG: tag 0x[0-9a-f]{8}/'.{4}' is not supported with codec id \d+ and format "
                       r"'webm / WebM'$")
_QUIET_LOCK = threading.Lock()


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Open or close a cv2.VideoWriter without console noise: OpenCV's logging is silenced, and what FFmpeg and
    OpenCV print on the process's stderr meanwhile is held back, then passed on without the harmless WebM tag
    line. A successful write prints nothing; a real error still shows."""
    with _QUIET_LOCK:  # one at a time: each swaps file descriptor 2
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                cv2.utils.logging.setLogLevel(level)
                held.seek(0)
                lines = held.read().decode(errors="replace").splitlines()
                kept = [line for line in lines if line.strip() and not _HARMLESS.match(line)]
                if kept:  # another thread's lines, or a real error: shown, only later
                    print("\n".join(kept), file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=1)
def _video_codecs() -> tuple[tuple[str, str], ...]:
    """The browser-playable (fourcc, suffix) pairs this OpenCV build can write, best first; probed once, quietly.

    pip's headless OpenCV writes VP8 in WebM, which Chromium plays; MPEG-4 part 2 ('mp4v') it writes too, but
    Chromium does not play it."""
    found = []
    probe = Path(tempfile.mkdtemp(prefix="dino-seg-codec-"))
    try:
        for fourcc, suffix in BROWSER_CODECS:
            with quiet_opencv():
                writer = cv2.VideoWriter(str(probe / f"probe{suffix}"), cv2.VideoWriter_fourcc(*fourcc), 5,
                                         (64, 64))
                opened = writer.isOpened()
                if opened:
                    writer.write(np.zeros((64, 64, 3), np.uint8))
                writer.release()
            if opened and (probe / f"probe{suffix}").stat().st_size > 0:
                found.append((fourcc, suffix))
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return tuple(found)
