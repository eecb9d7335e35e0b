"""Attention maps and masks: the reference threshold rule, shapes at any size, image modes, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dino_seg.attention import (cls_attention, compute_attention, last_selfattention,
                                masks_to_image_size, preprocess, resized_size, threshold_masks)
from dino_seg.groundtruth import load_mask
from dino_seg.images import ImageError, load_image, to_rgb
from dino_seg.masks import mask_iou
from dino_seg.models import build_backbone
from dino_seg.viz import davis_palette, overlay_labels, overlay_mask
from eval import attention as cli
from eval import attention_run
from eval.common import output_folders
from reference_vit import reference_forward


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_backbone("vit_tiny", 16).eval()


def test_threshold_keeps_exactly_the_patches_holding_the_mass():
    # Sorted ascending: 0.10, 0.15, 0.25, 0.50 with cumulative sums 0.10, 0.25, 0.50, 1.00.
    attn = torch.tensor([[0.10, 0.50], [0.15, 0.25]])
    assert threshold_masks(attn, 0.6).tolist() == [[False, True], [False, True]]  # cumsum > 0.4
    assert threshold_masks(attn, 0.8).tolist() == [[False, True], [True, True]]  # cumsum > 0.2
    assert threshold_masks(attn, 0.05).tolist() == [[False, True], [False, False]]  # cumsum > 0.95
    # Unnormalised maps (the [CLS]->patch row does not sum to 1) give the same masks, per head.
    heads = torch.stack([attn * 0.3, attn.flip(0) * 7])
    assert threshold_masks(heads, 0.6).tolist() == [[[False, True], [False, True]], [[False, True], [False, True]]]


def _reference_threshold(attentions: torch.Tensor, threshold: float) -> torch.Tensor:
    # visualize_attention.py's loop, for maps (heads, N).
    val, idx = torch.sort(attentions)
    val /= torch.sum(val, dim=1, keepdim=True)
    th_attn = torch.cumsum(val, dim=1) > (1 - threshold)
    idx2 = torch.argsort(idx)
    for head in range(attentions.shape[0]):
        th_attn[head] = th_attn[head][idx2[head]]
    return th_attn


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.6, 0.9])
def test_threshold_equals_the_reference_loop_on_random_maps(threshold):
    torch.manual_seed(3)
    maps = torch.rand(6, 7, 9).softmax(-1).double()
    ours = threshold_masks(maps, threshold)
    assert torch.equal(ours.reshape(6, -1), _reference_threshold(maps.reshape(6, -1).clone(), threshold))


def test_threshold_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="--threshold"):
        threshold_masks(torch.rand(2, 2), 1.5)


def test_cls_attention_is_the_reference_last_attention_row(model):
    x = torch.randn(1, 3, 48, 80)
    full = last_selfattention(model, x)
    ref = reference_forward(model.state_dict(), x, heads=3, return_last_attention=True)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(full.sum(-1), torch.ones(1, 3, 16))
    cls = cls_attention(model, x)
    assert cls.shape == (1, 3, 3, 5)
    torch.testing.assert_close(cls, full[:, :, 0, 1:].reshape(1, 3, 3, 5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size_wh,image_size", [((150, 100), (64,)), ((100, 150), (64,)), ((99, 61), (40, 70)),
                                                ((854, 480), (480,)), ((5, 3), (33,))])
def test_resized_size_is_what_torchvision_resize_gives(size_wh, image_size):
    img = Image.new("RGB", size_wh)
    arg = list(image_size) if len(image_size) == 2 else image_size[0]
    w, h = transforms.Resize(arg)(img).size
    assert resized_size(size_wh, image_size) == (h, w)


def test_non_square_images_are_resized_and_cropped_to_whole_patches(model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8))
    result = compute_attention(model, image, (70,))  # short side 70 -> 70 x 105 -> crop 64 x 96
    assert result.maps.shape == (3, 4, 6) and result.image.shape == (64, 96, 3)
    masks = result.masks(0.6, include_mean=True)
    assert masks.shape == (4, 64, 96) and masks.dtype == bool
    # Upsampling is nearest: each 16x16 block of a mask is constant and equals the patch mask.
    patch_masks = threshold_masks(torch.from_numpy(result.maps), 0.6).numpy()
    assert np.array_equal(masks[:3, ::16, ::16], patch_masks)
    x = preprocess(image, (64, 96), 16)
    assert x.shape == (1, 3, 64, 96)


def test_masks_go_back_to_the_original_image_size():
    masks = np.zeros((1, 4, 6), dtype=bool)
    masks[0, 0, 0] = True  # the top-left of a 5 x 6 resized image, cropped to 4 x 6
    full = masks_to_image_size(masks, (5, 6), (10, 12))
    assert full.shape == (1, 10, 12)
    assert full[0, :2, :2].all() and full.sum() == 4


def test_image_modes_are_read_as_8bit_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((5, 7), 200, np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([np.full((5, 7, 3), 10, np.uint8), np.zeros((5, 7), np.uint8)])).save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 65535], [32896, 257]], dtype=np.uint16)).save(deep)
    tiny = tmp_path / "tiny.jpg"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tiny)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [200, 200, 200]
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [10, 10, 10]
    assert np.asarray(load_image(deep))[..., 0].tolist() == [[0, 255], [128, 1]]
    assert load_image(tiny).size == (1, 1)
    assert np.asarray(to_rgb(np.array([[0.0, 1.0]], dtype=np.float32))).tolist() == [[[0] * 3, [255] * 3]]


def test_a_tiny_image_still_gives_attention(model, tmp_path):
    result = compute_attention(model, Image.new("RGB", (2, 3), (40, 90, 200)), (32, 32))
    assert result.maps.shape == (3, 2, 2)
    with pytest.raises(ValueError, match="image_size"):
        compute_attention(model, Image.new("RGB", (2, 3)), (8,))


def test_missing_and_non_image_files_are_clear_errors(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.png: no such file"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        load_image(text)
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(ImageError, match=r"cut\.png"):
        load_image(truncated)


def test_masks_read_from_palette_and_binary_pngs(tmp_path):
    labels = np.array([[0, 1, 2], [255, 0, 1]], dtype=np.uint8)
    pal = Image.frombytes("P", (3, 2), labels.tobytes())
    pal.putpalette(davis_palette().ravel().tolist())
    pal.save(tmp_path / "p.png")
    fg, void = load_mask(tmp_path / "p.png")
    assert fg.tolist() == [[False, True, True], [False, False, True]]
    assert void.tolist() == [[False, False, False], [True, False, False]]
    Image.fromarray(np.array([[0, 255]], np.uint8)).save(tmp_path / "b.png")
    fg, void = load_mask(tmp_path / "b.png")
    assert fg.tolist() == [[False, True]] and not void.any()


def test_palette_and_overlays():
    pal = davis_palette()
    assert pal[0].tolist() == [0, 0, 0] and pal[1].tolist() == [128, 0, 0] and pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0] and pal[255].tolist() == [224, 224, 192]
    image = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = overlay_mask(image, mask, (200, 0, 0), alpha=0.5, contour=False)
    assert out[10, 10].tolist() == [150, 50, 50] and out[0, 0].tolist() == [100, 100, 100]
    outlined = overlay_mask(image, mask, (200, 0, 0), alpha=0.5, contour=True)
    assert outlined[5, 10].tolist() == [200, 0, 0] and outlined[10, 10].tolist() == [150, 50, 50]
    labels = np.zeros((20, 20), np.uint8)
    labels[:5, :5] = 2
    labels[15:, 15:] = 255  # void stays as it is
    out = overlay_labels(image, labels, alpha=1.0, contour=False)
    assert out[0, 0].tolist() == [0, 128, 0] and out[19, 19].tolist() == [100, 100, 100]


def _write_image(path, hw, seed):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)).save(path)


def test_cli_writes_maps_masks_and_scores(tmp_path, tiny_vit_weights, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _write_image(images / "a.png", (64, 96), 0)
    _write_image(images / "b.jpg", (48, 48), 1)
    (images / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    args = ["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(images), "--image_size", "64", "96",
            "--output_dir", str(out), "--threshold", "0.6", "--device", "cpu"]
    assert cli.main(args) == 0
    assert "1 unreadable file(s) skipped" in capsys.readouterr().out
    a = out / "a"
    attention = np.load(a / "attention.npy")
    masks = np.load(a / "masks.npy")
    assert attention.dtype == np.float32 and attention.shape == (3, 4, 6)
    assert masks.dtype == bool and masks.shape == (3, 64, 96)
    expected = {"img.png", "attention.npy", "masks.npy", "mask_th0.6_mean.png"}
    expected |= {f"attn-head{j}.png" for j in range(3)} | {f"mask_th0.6_head{j}.png" for j in range(3)}
    assert {p.name for p in a.iterdir()} == expected
    assert Image.open(a / "mask_th0.6_head1.png").size == (96, 64)
    np.testing.assert_array_equal(masks, threshold_masks(torch.from_numpy(attention), 0.6).numpy()
                                  .repeat(16, axis=1).repeat(16, axis=2))

    # Ground truth equal to head 1's mask scores 1.0 for that head and the best head.
    gt = tmp_path / "gt"
    gt.mkdir()
    Image.fromarray(masks[1].astype(np.uint8) * 255).save(gt / "a.png")
    assert cli.main(args + ["--gt_dir", str(gt)]) == 0
    rows = (out / "jaccard.csv").read_text().splitlines()
    assert rows[0] == "image,head0,head1,head2,best_head,mean_map"
    a_row = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert a_row["image"] == "a.png" and a_row["head1"] == "1.0000" and a_row["best_head"] == "1.0000"
    expected_h0 = mask_iou(masks[0], masks[1], empty=1.0)
    assert float(a_row["head0"]) == pytest.approx(expected_h0, abs=1e-4)
    assert rows[-1].startswith("mean,")


def test_cli_errors_are_one_line(tmp_path, tiny_vit_weights, capsys):
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(tmp_path / "nope.jpg")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --image_path {tmp_path / 'nope.jpg'}: no such file or folder"
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(bad),
                     "--output_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bad}: not an image file (expected PNG, JPEG, BMP, TIFF or WebP)"
    assert cli.main(["--pretrained_weights", str(bad)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_without_weights_the_cli_takes_the_reference_scripts_default_release():
    from eval import davis as davis_cli
    from eval.common import resolve_weights

    assert resolve_weights(cli.get_args_parser().parse_args([]))[0] == "dino_vits8"  # visualize_attention.py
    assert resolve_weights(davis_cli.get_args_parser().parse_args([]))[0] == "dino_vits16"  # eval_video_segmentation
    assert resolve_weights(cli.get_args_parser().parse_args(["--patch_size", "16"]))[0] == "dino_vits16"
    assert resolve_weights(cli.get_args_parser().parse_args(["--arch", "vit_base"]))[0] == "dino_vitb8"
    source, description = resolve_weights(cli.get_args_parser().parse_args(["--arch", "vit_tiny"]))
    assert source == "" and "RANDOM" in description  # no official vit_tiny: said loudly


def test_cli_mirrors_subfolders_and_never_lets_two_images_share_an_output_folder(tmp_path, tiny_vit_weights,
                                                                                   capsys):
    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        _write_image(images / sub / "frame.jpg", (32, 32), 0 if sub == "a" else 1)
    _write_image(images / "frame.jpg", (32, 32), 2)
    _write_image(images / "frame.png", (32, 32), 3)
    _write_image(images / "frame_jpg.png", (32, 32), 4)  # the name a disambiguated folder would take
    out = tmp_path / "out"
    stale = out / "a" / "frame" / ".img.png.0badc0de.dino-tmp.png"  # left by a run killed mid-write
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(images),
                     "--image_size", "32", "32", "--output_dir", str(out), "--device", "cpu"]) == 0
    assert "of 5 image(s)" in capsys.readouterr().out
    folders = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("img.png"))
    assert folders == ["a/frame", "b/frame", "frame_jpg", "frame_jpg_2", "frame_png"]
    assert not stale.exists()
    # Each folder holds its own image: the two `frame.jpg` of a/ and b/ were not written over each other.
    assert not np.array_equal(np.asarray(Image.open(out / "a/frame/img.png")),
                              np.asarray(Image.open(out / "b/frame/img.png")))
    assert np.array_equal(np.asarray(Image.open(out / "frame_png/img.png")),
                          np.asarray(Image.open(images / "frame.png")))
    # A real `frame_jpg.png` keeps its natural folder; `frame.jpg`, disambiguated, moves aside.
    assert np.array_equal(np.asarray(Image.open(out / "frame_jpg/img.png")),
                          np.asarray(Image.open(images / "frame_jpg.png")))


def test_output_folders_of_a_single_file_and_of_a_folder(tmp_path):
    assert output_folders([tmp_path / "x" / "photo.jpg"], None) == {tmp_path / "x" / "photo.jpg": Path("photo")}
    paths = [tmp_path / "s1" / "00000.jpg", tmp_path / "s2" / "00000.jpg"]
    assert list(output_folders(paths, tmp_path).values()) == [Path("s1/00000"), Path("s2/00000")]


def test_cli_full_disk_is_one_line(tmp_path, tiny_vit_weights, capsys, monkeypatch):
    from dino_seg import files
    from test_files import FullDisk

    _write_image(tmp_path / "a.png", (32, 32), 0)
    monkeypatch.setattr(files, "open", FullDisk(room=100), raising=False)
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(tmp_path / "a.png"),
                     "--image_size", "32", "32", "--output_dir", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"error: no space left on device while writing {tmp_path / 'out/a/img.png'}\n"


def test_decompression_bombs_are_skipped_or_decoded_reduced(tmp_path, tiny_vit_weights, capsys, monkeypatch):
    # PIL refuses images above twice MAX_IMAGE_PIXELS: lower it so that small files play the bombs.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    images = tmp_path / "images"
    images.mkdir()
    _write_image(images / "a_bomb.png", (64, 64), 0)  # 4096 px > 3000: no reduced decode for PNG
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(images / "b_big.jpg")  # decodable at 1/8
    _write_image(images / "c_small.png", (32, 32), 1)
    out = tmp_path / "out"
    assert cli.main(["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(images),
                     "--image_size", "32", "--output_dir", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"warning: skipped {images / 'a_bomb.png'}: too large to decode safely (Image size (4096 pixels) " \
           "exceeds limit of 3000 pixels" in captured.out + captured.err
    assert "of 2 image(s)" in captured.out and "1 unreadable file(s) skipped" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["b_big", "c_small", "summary.json"]
    assert Image.open(out / "b_big" / "img.png").size == (32, 32)
    # The reduced decode is libjpeg's 1/8 scale: 32 x 32, the size asked for.
    assert load_image(images / "b_big.jpg", min_size=(32, 32)).size == (32, 32)
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(images / "b_big.jpg", min_size=(33, 20))  # 1/4 (64 x 64) would be needed: still too large
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(images / "b_big.jpg")


def test_cli_output_dir_that_is_a_file_and_ctrl_c_are_one_line(tmp_path, tiny_vit_weights, capsys, monkeypatch):
    _write_image(tmp_path / "a.png", (32, 32), 0)
    common = ["--pretrained_weights", str(tiny_vit_weights), "--image_path", str(tmp_path / "a.png"),
              "--image_size", "32", "32", "--device", "cpu"]
    taken = tmp_path / "file"
    taken.write_text("x")
    assert cli.main(common + ["--output_dir", str(taken)]) == 2
    assert capsys.readouterr().err == f"error: --output_dir {taken}: is a file, expected a folder\n"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attention_run, "attention_results", interrupted)
    assert cli.main(common + ["--output_dir", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted: the outputs written so far are complete (files are written whole)"
