"""Reading and writing video files for propagation."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

MAX_SHORT_SIDE = 480  # uploaded videos are downscaled to this before propagation (the reference's 480p)
DEFAULT_FPS = 10.0  # when the container gives no frame rate, or one above 120 (a broken header)


class VideoError(ValueError):
    """A video file that cannot be opened or decoded, or frames that cannot be written; one line naming the file."""


def read_video_frames(video_path: str | Path, out_dir: Path, max_frames: int,
                      max_short_side: int = MAX_SHORT_SIDE) -> tuple[list[Path], float, list[str]]:
    """Decode up to `max_frames` frames of a video file to JPEGs in `out_dir`, downscaled to `max_short_side`.

    Returns the JPEG paths, the frame rate (DEFAULT_FPS when the file gives none) and notes that say what
    was downscaled or left out. Uploads sit under long hashed paths, so errors name the file only."""
    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise VideoError(f"{Path(video_path).name}: not a readable video file (try MP4, WebM or AVI)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
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
    return paths, (fps if 0 < fps < 121 else DEFAULT_FPS), notes


def write_video(frames: list[np.ndarray], out_stem: Path, fps: float,
                codecs: tuple[tuple[str, str], ...] | None = None) -> Path:
    """RGB frames as a video that Chromium plays: H.264 MP4 if OpenCV has it, else VP8 WebM, else an animated GIF.

    `codecs` overrides the (fourcc, suffix) pairs probed from this OpenCV build; the suffix replaces
    `out_stem`'s. Returns the file written."""
    if not frames:
        raise VideoError(f"{out_stem.name}: no frames to write")
    h, w = frames[0].shape[:2]
    for fourcc, suffix in _video_codecs() if codecs is None else codecs:
        path = out_stem.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
        if writer.isOpened():
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            return path
    path = out_stem.with_suffix(".gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


@functools.lru_cache(maxsize=1)
def _video_codecs() -> tuple[tuple[str, str], ...]:
    """The (fourcc, suffix) pairs this OpenCV build can write, best first; probed once.

    pip's headless OpenCV usually lacks H.264 (avc1) and writes MPEG-4 part 2 ('mp4v'), which Chromium
    does not play; VP8 in WebM it writes and Chromium plays."""
    found = []
    probe = Path(tempfile.mkdtemp(prefix="dino-seg-codec-"))
    try:
        for fourcc, suffix in (("avc1", ".mp4"), ("VP80", ".webm")):
            writer = cv2.VideoWriter(str(probe / f"probe{suffix}"), cv2.VideoWriter_fourcc(*fourcc), 5, (64, 64))
            if writer.isOpened():
                writer.write(np.zeros((64, 64, 3), np.uint8))
                writer.release()
                if (probe / f"probe{suffix}").stat().st_size > 0:
                    found.append((fourcc, suffix))
            else:
                writer.release()
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return tuple(found)
