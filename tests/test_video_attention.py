"""Attention videos: the reference's attention images transcribed, streaming and batching, inputs, masks, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as pth_transforms

from dino_seg.images import ImageError
from dino_seg.models import build_backbone
from dino_seg.video import VideoError, VideoWriter, iter_video, video_info
from dino_seg.video_attention import (Frame, attention_frames, colorize, folder_frames, jpeg_frames,
                                      make_attention_video, preprocess_frames, save_attention_image)
from dino_seg.viz import label_color, overlay_mask
from eval import video_attention as cli
from eval.common import resolve_weights
from reference_vit import reference_forward
from test_attention import _reference_threshold  # the reference's mask loop, the same in both scripts

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PATCH = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_backbone("vit_tiny", PATCH).eval()


def random_frames(n: int, h: int = 40, w: int = 56, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # Smooth changes from frame to frame, so the video codec keeps them apart and close to the source.
    return [np.clip(base.astype(int) + 20 * t, 0, 255).astype(np.uint8) for t in range(n)]


def write_jpegs(folder: Path, frames: list[np.ndarray], names: list[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(frames):
        path = folder / f"{(names or [])[t] if names else f'{t:05d}'}.jpg"
        Image.fromarray(frame).save(path, quality=95)
        paths.append(path)
    return paths


def write_avi(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    # Motion JPEG in AVI is built into every OpenCV build, and AVI stores the frame rate exactly.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame[:, :, ::-1])
    writer.release()
    return path


def reference_attention_array(model: nn.Module, img_path: Path, resize: list[int] | None) -> np.ndarray:
    """video_generation.py's _inference for one frame, step by step, up to the array given to plt.imsave."""
    with open(img_path, "rb") as f:
        img = Image.open(f)
        img = img.convert("RGB")
    steps = [pth_transforms.ToTensor()]
    if resize is not None:
        steps.append(pth_transforms.Resize(resize))
    steps.append(pth_transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    img = pth_transforms.Compose(steps)(img)
    # make the image divisible by the patch size (the reference's names: w is the height here)
    w, h = img.shape[1] - img.shape[1] % PATCH, img.shape[2] - img.shape[2] % PATCH
    img = img[:, :w, :h].unsqueeze(0)
    w_featmap, h_featmap = img.shape[-2] // PATCH, img.shape[-1] // PATCH
    attentions = reference_forward(model.state_dict(), img, heads=3, return_last_attention=True)
    nh = attentions.shape[1]
    attentions = attentions[0, :, 0, 1:].reshape(nh, -1)
    attentions = attentions.reshape(nh, w_featmap, h_featmap)
    attentions = nn.functional.interpolate(attentions.unsqueeze(0), scale_factor=PATCH, mode="nearest")[0].cpu().numpy()
    return sum(attentions[i] * 1 / attentions.shape[0] for i in range(attentions.shape[0]))


def reference_imsave(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    plt.imsave(fname=buf, arr=arr, cmap="inferno", format="jpg")
    return buf.getvalue()


@pytest.mark.parametrize("resize", [None, [24], [48, 40]], ids=["no-resize", "short-side", "h-w"])
def test_attention_images_are_the_reference_steps(model, tmp_path, resize):
    paths = write_jpegs(tmp_path / "frames", random_frames(2, 41, 58))
    ours = list(attention_frames(model, folder_frames(paths), resize=resize, batch_size=2))
    for path, frame in zip(paths, ours):
        expected = reference_attention_array(model, path, resize)
        array = np.repeat(np.repeat(frame.mean, PATCH, 0), PATCH, 1)  # what we colour, at pixel resolution
        assert array.shape == expected.shape and array.dtype == expected.dtype == np.float32
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-7)  # [CLS] row alone: float rounding only
        # Same array -> same picture: our image file is byte for byte what plt.imsave writes for it.
        save_attention_image(tmp_path / "ours.jpg", frame.attention_rgba())
        assert (tmp_path / "ours.jpg").read_bytes() == reference_imsave(array)
        # And the reference's own array gives the same picture, within JPEG's rounding.
        theirs = np.asarray(Image.open(io.BytesIO(reference_imsave(expected))).convert("RGB"), dtype=int)
        mine = np.asarray(Image.open(tmp_path / "ours.jpg").convert("RGB"), dtype=int)
        assert np.abs(theirs - mine).max() <= 2


def test_colorize_is_matplotlibs_inferno_min_max_scaled():
    values = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32) * 3 + 1  # min-max scaled: 0, 0.25, 0.5, 1
    rgba = colorize(values, patch_size=2)
    assert rgba.shape == (4, 4, 4) and rgba.dtype == np.uint8
    inferno = matplotlib.colormaps["inferno"]
    assert tuple(rgba[0, 0]) == tuple(inferno(0.0, bytes=True)) == (0, 0, 3, 255)
    assert tuple(rgba[3, 3]) == tuple(inferno(1.0, bytes=True)) == (252, 254, 164, 255)
    assert (rgba[:2, 2:] == rgba[0, 2]).all() and tuple(rgba[0, 2]) == tuple(inferno(0.25, bytes=True)) == (87, 15, 109, 255)


def test_preprocessing_resizes_the_tensor_then_crops_to_whole_patches():
    frame = random_frames(1, 41, 58)[0]
    x, shown = preprocess_frames([frame], [24], PATCH)
    tensor = pth_transforms.Resize(24)(pth_transforms.ToTensor()(Image.fromarray(frame)))  # (3, 24, 33)
    assert x.shape == (1, 3, 16, 32)
    torch.testing.assert_close(shown[0], tensor[:, :16, :32], rtol=0, atol=0)
    with pytest.raises(ValueError, match="--resize"):
        preprocess_frames([frame], [8], PATCH)


def test_batches_and_streaming_give_the_frames_of_one_at_a_time(model):
    frames = [Frame(f"f{t}", f) for t, f in enumerate(random_frames(5))]
    frames.insert(3, Frame("odd-size", random_frames(1, 48, 40, seed=1)[0]))  # a folder may mix sizes
    one = list(attention_frames(model, frames, batch_size=1))
    pulled: list[int] = []

    def source():
        for t, frame in enumerate(frames):
            pulled.append(t)
            yield frame

    batched = attention_frames(model, source(), batch_size=2)
    first = next(batched)
    assert len(pulled) == 2  # one batch read, not the whole clip
    rest = [first, *batched]
    assert [r.name for r in rest] == [r.name for r in one] == ["f0", "f1", "f2", "odd-size", "f3", "f4"]
    for a, b in zip(one, rest):
        assert a.maps.shape == b.maps.shape and np.array_equal(a.image, b.image)
        np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-7)  # batched matmuls round differently


@pytest.mark.parametrize("mode", ["mean", "heads"])
def test_mask_overlays_are_the_reference_masks_drawn(model, mode):
    frame = next(attention_frames(model, [Frame("a", random_frames(1, 64, 80)[0])]))
    maps = torch.from_numpy(frame.mean[None] if mode == "mean" else frame.maps).double()
    masks = _reference_threshold(maps.reshape(len(maps), -1).clone(), 0.6).reshape(maps.shape).numpy()
    expected = frame.image
    for j, mask in enumerate(masks):
        expected = overlay_mask(expected, np.kron(mask, np.ones((PATCH, PATCH), bool)), label_color(j + 1))
    assert np.array_equal(frame.mask_overlay(0.6, mode), expected)
    assert not np.array_equal(expected, frame.image)


def test_an_unreadable_frame_mid_clip_leaves_no_video(model, tmp_path):
    paths = write_jpegs(tmp_path / "frames", random_frames(4))
    paths[2].write_bytes(b"not a jpeg")
    with pytest.raises(ImageError, match="00002.jpg"):
        make_attention_video(model, folder_frames(paths), tmp_path / "out" / "video", 5.0, masks="mean",
                             attention_dir=tmp_path / "out" / "attention", batch_size=1)
    # The frames before it have their images; no video, masks video or temporary file is left.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["attention"]
    assert sorted(p.name for p in (tmp_path / "out" / "attention").iterdir()) == ["attn-00000.jpg", "attn-00001.jpg"]


def test_a_failed_close_of_the_main_video_leaves_no_masks_video_behind(model, tmp_path, monkeypatch):
    real_close = VideoWriter.close

    def close(self):
        if self.out_stem.name == "video":  # the main video's close hits a full disk
            self.discard()
            raise OSError(28, "No space left on device")
        return real_close(self)

    monkeypatch.setattr(VideoWriter, "close", close)
    paths = write_jpegs(tmp_path / "frames", random_frames(2))
    # Motion JPEG: OpenCV writes it itself, so the masks writer really holds an open temporary file.
    with pytest.raises(OSError, match="No space left"):
        make_attention_video(model, folder_frames(paths), tmp_path / "out" / "video", 5.0, masks="mean",
                             codecs=(("MJPG", ".avi"),))
    assert list((tmp_path / "out").iterdir()) == []  # the masks video's temporary file is gone too


def run_cli(args: list[str], weights: Path) -> int:
    return cli.main(["--pretrained_weights", str(weights), *args])


def test_cli_on_a_folder_of_frames(tiny_vit_weights, tmp_path, capsys):
    frames = random_frames(3)
    write_jpegs(tmp_path / "in", frames, names=["b", "a", "c"])
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    assert run_cli(["--input_path", str(tmp_path / "in"), "--output_path", str(out), "--masks", "heads",
                    "--batch_size", "2"], tiny_vit_weights) == 0
    names = sorted(p.name for p in (out / "attention").iterdir())
    assert names == ["attn-a.jpg", "attn-b.jpg", "attn-c.jpg"]
    assert not (out / "frames").exists()  # frames are extracted only from a video
    videos = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "summary.json")
    assert [Path(v).stem for v in videos] == ["masks", "video"]
    summary = json.loads((out / "summary.json").read_text())  # batches of 2 in name order, one process
    assert summary["world_size"] == 1 and summary["frames"] == 3
    assert [(b["rank"], b["first"], b["last"], b["frames"]) for b in summary["batches"]] == [(0, "a", "b", 2),
                                                                                            (0, "c", "c", 1)]
    video = out / next(v for v in videos if v.startswith("video"))
    fps, _ = video_info(video)
    assert fps == pytest.approx(30.0, rel=0.01)  # the reference's --fps default for folders
    decoded = list(iter_video(video))
    assert len(decoded) == 3 and decoded[0].shape == (32, 48, 3)
    # Frames in name order (a, b, c): each decoded frame is nearest to its own attention image.
    images = [np.asarray(Image.open(out / "attention" / n).convert("RGB"), dtype=int) for n in names]
    for t, d in enumerate(decoded):
        assert int(np.argmin([np.abs(d.astype(int) - im).mean() for im in images])) == t
    assert "wrote 3 attention images" in capsys.readouterr().out


def test_cli_on_a_video_takes_its_frames_and_its_rate(tiny_vit_weights, tmp_path):
    clip = write_avi(tmp_path / "clip.avi", random_frames(4), fps=12.0)
    out = tmp_path / "out"
    assert run_cli(["--input_path", str(clip), "--output_path", str(out), "--resize", "24"], tiny_vit_weights) == 0
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"frame-{t:04d}.jpg" for t in range(4)]
    assert sorted(p.name for p in (out / "attention").iterdir()) == [f"attn-frame-{t:04d}.jpg" for t in range(4)]
    video = next(p for p in out.iterdir() if p.stem == "video")
    assert video_info(video)[0] == pytest.approx(12.0, rel=0.01)
    assert next(iter_video(video)).shape == (16, 32, 3)  # short side 24 -> 24x33 -> cropped to 16x32
    # --fps overrides the input's rate; --video_format avi is the reference's Xvid AVI.
    assert run_cli(["--input_path", str(clip), "--output_path", str(out), "--fps", "5", "--video_format", "avi"],
                   tiny_vit_weights) == 0
    assert video_info(out / "video.avi")[0] == pytest.approx(5.0, rel=0.01)


def test_video_only_assembles_a_folder_of_attention_images(tmp_path):
    folder = tmp_path / "attention"
    frames = [np.full((32, 48, 3), (60 * t, 200 - 50 * t, 90), np.uint8) for t in range(3)]  # flat: codecs keep them
    write_jpegs(folder, frames, names=["attn-frame-0000", "attn-frame-0001", "attn-frame-0002"])
    write_jpegs(folder, random_frames(1, 32, 48, seed=5), names=["other"])  # not attn-*.jpg: left out
    assert cli.main(["--input_path", str(folder), "--video_only", "--fps", "8", "--output_path", str(tmp_path),
                     "--video_format", "avi"]) == 0
    assert video_info(tmp_path / "video.avi")[0] == pytest.approx(8.0, rel=0.01)
    decoded = list(iter_video(tmp_path / "video.avi"))
    assert len(decoded) == 3
    for t, d in enumerate(decoded):
        assert np.abs(d.astype(int) - frames[t]).mean() < 4


def test_default_weights_are_the_papers_visualisation_model():
    args = cli.get_args_parser().parse_args(["--input_path", "x"])
    assert resolve_weights(args)[0] == "dino_vits8_300ep"
    args = cli.get_args_parser().parse_args(["--input_path", "x", "--patch_size", "16"])
    assert resolve_weights(args)[0] == "dino_vits16"


def test_jpeg_frames_of_a_folder():
    with pytest.raises(VideoError, match="no such folder"):
        jpeg_frames("/nonexistent/frames")


@pytest.mark.parametrize("case", ["missing", "not-a-video", "empty-folder", "png-folder", "no-attention-images",
                                  "bad-resize"])
def test_bad_input_is_a_one_line_error_naming_it(tiny_vit_weights, tmp_path, capsys, case):
    args = ["--output_path", str(tmp_path / "out")]
    if case == "missing":
        target, expected = tmp_path / "nope.mp4", "nope.mp4: no such file or folder"
    elif case == "not-a-video":
        target = tmp_path / "notes.mp4"
        target.write_text("this is not a video")
        expected = "notes.mp4: not a readable video file"
    elif case == "empty-folder":
        target = tmp_path / "empty"
        target.mkdir()
        expected = "empty: no .jpg frames in this folder; expected"
    elif case == "png-folder":
        target = tmp_path / "pngs"
        target.mkdir()
        Image.fromarray(random_frames(1)[0]).save(target / "00000.png")
        expected = "pngs: no .jpg frames in this folder (it holds 1 other file(s), e.g. 00000.png)"
    elif case == "no-attention-images":
        target = tmp_path / "frames"
        write_jpegs(target, random_frames(1))
        args.append("--video_only")
        expected = "frames: no attention images (attn-*.jpg)"
    else:
        target = tmp_path / "frames"
        write_jpegs(target, random_frames(1))
        args += ["--resize", "8"]
        expected = "--resize: expected one or two sizes of at least the patch size 16"
    assert run_cli(["--input_path", str(target), *args], tiny_vit_weights) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert not list((tmp_path / "out").glob("video*"))


def test_folder_batches_are_cut_from_headers_and_decode_only_their_frames(tmp_path):
    from dino_seg.video_attention import _same_size_batches, folder_batches

    paths = write_jpegs(tmp_path, random_frames(3) + random_frames(2, 48, 56) + random_frames(1))
    (tmp_path / "00006.jpg").write_bytes(b"not a jpeg")  # header unreadable: a batch of its own
    paths.append(tmp_path / "00006.jpg")
    paths += write_jpegs(tmp_path, random_frames(1), names=["00007"])
    batches = list(folder_batches(paths, 2))
    # The cut one process makes from decoded frames, and one batch more for the unreadable file.
    decoded = [[f.name for f in b] for b in _same_size_batches(folder_frames(paths[:6]), 2)]
    assert decoded == [["00000", "00001"], ["00002"], ["00003", "00004"], ["00005"]]
    assert [[f.name for f in batch()] for batch in batches[:4]] == decoded
    assert [f.name for f in batches[5]()] == ["00007"]  # decodes without touching the unreadable file
    with pytest.raises(ImageError, match="00006.jpg"):
        batches[4]()


def test_several_inputs_each_get_a_folder_and_a_clash_of_names_is_refused(tiny_vit_weights, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    clip = write_avi(tmp_path / "in" / "walk.avi", random_frames(2), fps=10.0)
    write_jpegs(tmp_path / "in" / "walk", random_frames(2))
    assert run_cli(["--input_path", str(clip), str(tmp_path / "in" / "walk"), "--output_path",
                    str(tmp_path / "out")], tiny_vit_weights) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --input_path: {clip} and {tmp_path / 'in' / 'walk'} would both write to "
                   f"{tmp_path / 'out' / 'walk'}; rename one, or run them with different --output_path")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    assert run_cli(["--input_path", str(tmp_path / "in" / "walk"), str(tmp_path / "in"), "--video_only",
                    "--output_path", str(tmp_path / "out")], tiny_vit_weights) == 2
    assert capsys.readouterr().err.strip() == ("error: --video_only: assembles one folder of attention images; "
                                               "give one --input_path")


def test_resume_skips_complete_inputs_of_the_same_settings(tiny_vit_weights, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    clip = write_avi(tmp_path / "in" / "swan.avi", random_frames(3), fps=10.0)
    write_jpegs(tmp_path / "in" / "walk", random_frames(2, seed=1))
    out = tmp_path / "out"
    args = ["--input_path", str(clip), str(tmp_path / "in" / "walk"), "--output_path", str(out), "--batch_size", "2"]
    assert run_cli(args, tiny_vit_weights) == 0
    assert sorted(p.name for p in (out / "swan" / "frames").iterdir()) == [f"frame-{t:04d}.jpg" for t in range(3)]
    assert sorted(p.name for p in (out / "walk" / "attention").iterdir()) == ["attn-00000.jpg", "attn-00001.jpg"]
    summary = json.loads((out / "summary.json").read_text())
    assert {k: (v["output"], v["rank"], v["frames"], v["resumed"]) for k, v in summary["inputs"].items()} == {
        "swan": ("swan", 0, 3, False), "walk": ("walk", 0, 2, False)}
    capsys.readouterr()

    def stamps() -> dict[str, int]:  # every input's files (the run's own summary.json is rewritten)
        return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.glob("*/**/*") if p.is_file()}

    before = stamps()
    assert len(before) == 12  # swan: 3 frames, 3 attention images, video, summary.json; walk: no frames
    assert run_cli(args, tiny_vit_weights) == 0  # both complete: nothing is redone
    assert capsys.readouterr().out.count("skipped (--overwrite to redo it)") == 2
    assert stamps() == before
    assert [v["resumed"] for v in json.loads((out / "summary.json").read_text())["inputs"].values()] == [True, True]
    # A missing image, other settings or --overwrite: the input is made again.
    (out / "swan" / "frames" / "frame-0001.jpg").unlink()
    assert run_cli(args, tiny_vit_weights) == 0
    assert capsys.readouterr().out.count("skipped") == 1 and (out / "swan" / "frames" / "frame-0001.jpg").is_file()
    assert run_cli(args + ["--masks"], tiny_vit_weights) == 0
    assert capsys.readouterr().out.count("skipped") == 0 and len(list(out.glob("*/masks.*"))) == 2
    assert run_cli(args + ["--masks", "--overwrite"], tiny_vit_weights) == 0
    assert capsys.readouterr().out.count("skipped") == 0
    # An input changed since: not resumed.
    write_jpegs(tmp_path / "in" / "walk", random_frames(3, seed=2))
    assert run_cli(args + ["--masks"], tiny_vit_weights) == 0
    assert capsys.readouterr().out.count("skipped") == 1
    assert json.loads((out / "walk" / "summary.json").read_text())["frames"] == 3
