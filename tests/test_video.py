"""Video files: frames written with write_video read back by read_video_frames, the GIF fallback, atomic writes,
streamed reading, readable errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from dino_seg.video import (DEFAULT_FPS, VideoError, VideoWriter, _video_codecs, iter_video, read_video_frames,
                            video_info, write_video)

H, W = 48, 64


def two_tone_frames(n: int) -> list[np.ndarray]:
    """RGB frames with a fixed left half and a right half whose colour changes each frame: codecs keep
    flat 16-pixel blocks nearly exact, and a flip or a swapped channel order would show."""
    frames = []
    for t in range(n):
        frame = np.empty((H, W, 3), np.uint8)
        frame[:, : W // 2] = (200, 60, 20)
        frame[:, W // 2:] = (40 * t, 200 - 30 * t, 90)
        frames.append(frame)
    return frames


def read_rgb(paths: list[Path]) -> list[np.ndarray]:
    return [cv2.imread(str(p))[:, :, ::-1].astype(int) for p in paths]


def test_round_trip_keeps_count_size_order_and_pixels(tmp_path, video_codec):
    frames = two_tone_frames(5)
    video = write_video(frames, tmp_path / "clip", fps=8.0)
    expected_suffix = ".gif" if video_codec == "gif" else _video_codecs()[0][1]
    assert video == tmp_path / f"clip{expected_suffix}"
    paths, fps, notes = read_video_frames(video, tmp_path / "frames", max_frames=10)
    assert [p.name for p in paths] == [f"{t:05d}.jpg" for t in range(5)]
    assert notes == []
    assert fps == pytest.approx(8.0, rel=0.05)  # GIF stores centiseconds: 125 ms becomes 120 ms
    back = read_rgb(paths)
    assert all(b.shape == (H, W, 3) for b in back)
    for t, (b, f) in enumerate(zip(back, frames)):
        assert np.abs(b - f).mean() < 4, t  # lossy codec and JPEG, within a few levels
        # Each decoded frame is nearest to its own source frame: order kept, no frame dropped or repeated.
        distances = [np.abs(b - g).mean() for g in frames]
        assert int(np.argmin(distances)) == t


def test_frame_cap_and_downscale_are_noted(tmp_path):
    video = write_video(two_tone_frames(5), tmp_path / "clip", fps=5.0)
    paths, _, notes = read_video_frames(video, tmp_path / "frames", max_frames=3, max_short_side=32)
    assert len(paths) == 3
    assert cv2.imread(str(paths[0])).shape == (32, 43, 3)  # 64 * 32 / 48 = 42.7 rounds to 43
    assert notes == ["frames of 64x48 downscaled to 43x32", "only the first 3 of 5 frames are used (cap 3)"]


def test_gif_fallback_without_a_codec(tmp_path):
    frames = [np.full((H, W, 3), 40 * t, np.uint8) for t in range(4)]
    path = write_video(frames, tmp_path / "clip", fps=5.0, codecs=())
    assert path == tmp_path / "clip.gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 200
        gif.seek(2)
        assert np.array_equal(np.asarray(gif.convert("RGB")), frames[2])


def test_the_gif_fallback_refuses_a_clip_over_its_memory_cap(tmp_path):
    cap = 3 * W * H * 4  # three frames as PIL holds them (4 bytes a pixel)
    writer = VideoWriter(tmp_path / "clip", fps=5.0, codecs=(), gif_max_bytes=cap)
    with pytest.raises(VideoError, match=r"clip: .* GIF fallback holds every frame in memory: 4 frames of 64x48 "
                                         r"pass its cap of 0 MB"):
        with writer:
            for frame in two_tone_frames(6):
                writer.write(frame)
    # Refused at the fourth frame: never more than three held, then dropped; no file, no temporary file.
    assert writer.count == 3 and writer._gif == [] and list(tmp_path.iterdir()) == []
    with VideoWriter(tmp_path / "clip", fps=5.0, codecs=(), gif_max_bytes=cap) as writer:
        for frame in two_tone_frames(3):  # exactly at the cap
            writer.write(frame)
    with Image.open(writer.path) as gif:
        assert gif.n_frames == 3
    # A codec streams frames to its file: no cap applies.
    with VideoWriter(tmp_path / "streamed", fps=5.0, codecs=(("MJPG", ".avi"),), gif_max_bytes=cap) as writer:
        for frame in two_tone_frames(6):
            writer.write(frame)
    assert writer.fourcc == "MJPG" and len(list(iter_video(writer.path))) == 6


def test_probed_codecs_are_the_browser_playable_ones():
    codecs = _video_codecs()
    assert set(codecs) <= {("avc1", ".mp4"), ("VP80", ".webm")}
    assert codecs is _video_codecs()  # probed once


def test_a_codec_this_build_lacks_falls_through_to_the_next(tmp_path):
    path = write_video(two_tone_frames(2), tmp_path / "clip", fps=5.0, codecs=(("XXXX", ".zzz"),))
    assert path == tmp_path / "clip.gif"


def test_non_video_file_is_a_one_line_error_naming_it(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(VideoError) as info:
        read_video_frames(text, tmp_path / "frames", max_frames=3)
    assert str(info.value) == "notes.mp4: not a readable video file (try MP4, WebM or AVI)"
    assert isinstance(info.value, ValueError)
    with pytest.raises(VideoError, match="no frames to write"):
        write_video([], tmp_path / "empty", fps=5.0)


def test_implausible_frame_rate_becomes_the_default(tmp_path):
    # Motion JPEG in AVI is built into OpenCV; a header of 200 fps is more than the 120 we believe.
    path = tmp_path / "fast.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 200, (W, H))
    assert writer.isOpened()
    for frame in two_tone_frames(3):
        writer.write(frame[:, :, ::-1])
    writer.release()
    paths, fps, _ = read_video_frames(path, tmp_path / "frames", max_frames=5)
    assert len(paths) == 3 and fps == DEFAULT_FPS == 30.0  # video_generation.py's --fps default


def test_an_interrupted_write_leaves_the_old_video_and_no_partial_file(tmp_path, video_codec):
    old = write_video(two_tone_frames(2), tmp_path / "clip", fps=5.0)
    assert old.suffix == (".gif" if video_codec == "gif" else _video_codecs()[0][1])
    old_bytes = old.read_bytes()

    def frames():
        yield from two_tone_frames(4)
        raise KeyboardInterrupt  # Ctrl-C while frames are still being produced

    with pytest.raises(KeyboardInterrupt):
        write_video(frames(), tmp_path / "clip", fps=5.0)
    assert sorted(tmp_path.iterdir()) == [old]  # no temporary file left beside it
    assert old.read_bytes() == old_bytes


def test_a_streamed_video_appears_only_when_complete(tmp_path):
    with VideoWriter(tmp_path / "clip", fps=5.0) as writer:
        for frame in two_tone_frames(3):
            writer.write(frame)
        final = tmp_path / f"clip{writer._target.path.suffix}"
        assert not final.exists()  # frames go to a hidden temporary file until the end
        assert [p.name.startswith(".clip.") for p in tmp_path.iterdir()] == [True]
    assert writer.path == final and [p.name for p in tmp_path.iterdir()] == [final.name]
    assert writer.count == 3


def test_iter_video_streams_rgb_frames_and_info_reads_the_rate(tmp_path):
    frames = two_tone_frames(4)
    video = write_video(frames, tmp_path / "clip", fps=12.0)
    fps, count = video_info(video)
    assert fps == pytest.approx(12.0, rel=0.05) and count in (0, 4)  # WebM headers may not count frames
    back = list(iter_video(video))
    assert len(back) == 4 and all(b.shape == (H, W, 3) for b in back)
    assert np.abs(back[2].astype(int) - frames[2]).mean() < 4  # RGB order, not BGR
    assert len(list(iter_video(video, max_frames=2))) == 2
    with pytest.raises(VideoError, match="missing.mp4: no such video file"):
        video_info(tmp_path / "missing.mp4", name="missing.mp4")
