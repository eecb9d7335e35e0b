"""The fast augmentation against the reference PIL pipeline: the same random parameters from the same
seeds, per-transform pixel tolerances, crop statistics, reduced JPEG decoding, bad input and resume."""

from __future__ import annotations

import math
from pathlib import Path
import random

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFilter, ImageOps, JpegImagePlugin
from torchvision import transforms
from torchvision.transforms import functional as F

from dino_seg import images
from dino_seg.images import IMAGENET_MEAN, IMAGENET_STD, ImageError, load_image
from train import fast_augment as fa
from train.augment import DataAugmentationDINO
from train.data import ImageFilesDataset, build_loader, seeded_rng
from train_helpers import textured_images

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str, size: tuple[int, int] = (160, 120)) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(size, Image.BICUBIC)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def to_levels(crop: torch.Tensor) -> np.ndarray:
    """A normalised crop back to 0-255 levels (float), (H, W, 3)."""
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    return ((crop * std + mean) * 255).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------- parameters: the reference's draws


def reference_draws(height: int, width: int, scale, blur_p: float, solarize_p: float | None) -> tuple:
    """The random draws of one reference crop, written out in the order of its transforms: RandomResizedCrop,
    RandomHorizontalFlip, RandomApply(ColorJitter, 0.8), RandomGrayscale(0.2), GaussianBlur (Python's
    random), Solarization (Python's random)."""
    box = transforms.RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), [3 / 4, 4 / 3])
    flip = bool(torch.rand(1) < 0.5)
    jitter = None
    if not 0.8 < torch.rand(1):
        cj = transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)
        order, b, c, s, h = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
        jitter = (order.tolist(), b, c, s, h)
    gray = bool(torch.rand(1) < 0.2)
    blur = None if random.random() > blur_p else random.uniform(0.1, 2.0)
    solarize = solarize_p is not None and random.random() < solarize_p
    return box, flip, jitter, gray, blur, solarize


def test_sampled_parameters_are_the_reference_draws():
    aug = fa.FastAugmentationDINO((0.4, 1.0), (0.05, 0.4), 8, 224, 96)
    kinds = [((0.4, 1.0), 1.0, None), ((0.4, 1.0), 0.1, 0.2)] + [((0.05, 0.4), 0.5, None)] * 8
    for seed, (h, w) in enumerate([(480, 854)] * 150 + [(3024, 4032), (20, 900), (900, 20), (7, 5)] * 10):
        with seeded_rng(seed):
            fast = aug.sample_all(h, w)
        with seeded_rng(seed):
            ref = [reference_draws(h, w, *kind) for kind in kinds]
        assert [(p.box, p.flip, p.jitter, p.gray, p.blur, p.solarize) for p in fast] == ref


def test_parameter_distributions():
    aug = fa.FastAugmentationDINO((0.4, 1.0), (0.05, 0.4), 8, 224, 96)
    params = []
    with seeded_rng(0):
        for _ in range(400):
            params.append(aug.sample_all(480, 854))
    n = len(params)

    def rate(values: list[bool]) -> float:
        return sum(values) / len(values)

    def close(p: float, expected: float, count: int) -> bool:  # within 5 binomial standard deviations
        return abs(p - expected) <= 5 * math.sqrt(max(expected * (1 - expected), 1e-9) / count) + 1e-12

    every = [p for ps in params for p in ps]
    assert close(rate([p.flip for p in every]), 0.5, len(every))
    assert close(rate([p.jitter is not None for p in every]), 0.8, len(every))
    assert close(rate([p.gray for p in every]), 0.2, len(every))
    assert rate([ps[0].blur is not None for ps in params]) == 1.0
    assert close(rate([ps[1].blur is not None for ps in params]), 0.1, n)
    assert close(rate([p.blur is not None for ps in params for p in ps[2:]]), 0.5, 8 * n)
    assert close(rate([ps[1].solarize for ps in params]), 0.2, n)
    assert not any(p.solarize for ps in params for p in ps[:1] + ps[2:])
    radii = np.array([p.blur for p in every if p.blur is not None])
    assert radii.min() >= 0.1 and radii.max() <= 2.0 and abs(radii.mean() - 1.05) < 0.05
    factors = np.array([p.jitter[1:] for p in every if p.jitter is not None])  # b, c, s, h
    assert np.all(factors.min(0) >= [0.6, 0.6, 0.8, -0.1]) and np.all(factors.max(0) <= [1.4, 1.4, 1.2, 0.1])
    for crops, (lo, hi) in ((slice(0, 2), (0.4, 1.0)), (slice(2, None), (0.05, 0.4))):
        boxes = np.array([p.box for ps in params for p in ps[crops]], dtype=np.float64)  # (i, j, h, w)
        areas, ratios = boxes[:, 2] * boxes[:, 3] / (480 * 854), boxes[:, 3] / boxes[:, 2]
        assert lo * 0.99 < areas.min() and areas.max() <= hi * 1.01  # rounding to whole pixels
        assert 0.74 < ratios.min() and ratios.max() < 1.35
        assert np.all(boxes[:, 0] + boxes[:, 2] <= 480) and np.all(boxes[:, 1] + boxes[:, 3] <= 854)


def test_fast_and_reference_pipelines_consume_the_generators_alike():
    image = photo("astronaut")
    states = []
    for augmentation in ("fast", "reference"):
        aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 4, 32, 16, augmentation=augmentation)
        with seeded_rng(7):
            aug(image)
            states.append((torch.get_rng_state(), random.getstate()))
    assert torch.equal(states[0][0], states[1][0]) and states[0][1] == states[1][1]


# ---------------------------------------------------------------- pixels: each transform against the reference
# Tolerances (also in the README): max abs error in 8-bit levels and minimum PSNR over the draws.


@pytest.mark.parametrize("name", PHOTOS)
def test_each_transform_matches_the_reference_pixels(name):
    im = photo(name)
    a = np.asarray(im)
    rng = np.random.default_rng(0)
    for f in map(float, rng.uniform(0.6, 1.4, 6)):  # exact: same LUT as Pillow's blend
        np.testing.assert_array_equal(fa.adjust_brightness(a, f), np.asarray(F.adjust_brightness(im, f)))
        np.testing.assert_array_equal(fa.adjust_contrast(a, f), np.asarray(F.adjust_contrast(im, f)))
    for f in map(float, rng.uniform(0.8, 1.2, 6)):
        out, ref = fa.adjust_saturation(a, f), np.asarray(F.adjust_saturation(im, f))
        assert np.abs(out.astype(int) - ref).max() <= 1 and (out != ref).mean() < 5e-3
    for f in map(float, rng.uniform(-0.1, 0.1, 6)):
        out, ref = fa.adjust_hue(a, f), np.asarray(F.adjust_hue(im, f))
        assert np.abs(out.astype(int) - ref).max() <= 8 and psnr(out, ref) > 44
    out, ref = fa.to_grayscale(a), np.asarray(F.rgb_to_grayscale(im, 3))
    assert np.abs(out.astype(int) - ref).max() <= 1 and (out != ref).mean() < 1e-3
    for r in map(float, rng.uniform(0.1, 2.0, 6)):
        out, ref = fa.gaussian_blur(a, r), np.asarray(im.filter(ImageFilter.GaussianBlur(r)))
        m = 3 * (int(r) + 2)  # Pillow re-replicates the edges after each pass: looser at the border
        assert np.abs(out.astype(int) - ref)[m:-m, m:-m].max() <= 3 and psnr(out, ref) > 47
    ref = F.normalize(F.to_tensor(ImageOps.solarize(im)), IMAGENET_MEAN, IMAGENET_STD)
    ours = fa.to_normalized_tensor(fa.solarize(a))
    assert ours.is_contiguous() and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(F.hflip(im)), a[:, ::-1])
    src = torch.from_numpy(a.copy())
    for _ in range(6):
        x0, y0, w, h = (int(v) for v in (rng.integers(0, 60), rng.integers(0, 40), rng.integers(20, 100), rng.integers(20, 80)))
        for size in (16, 32, 48):
            ref = np.asarray(im.crop((x0, y0, x0 + w, y0 + h)).resize((size, size), Image.BICUBIC))
            assert np.abs(fa.resized_crop(src, (x0, y0, x0 + w, y0 + h), size).astype(int) - ref).max() <= 1
            np.testing.assert_array_equal(fa.resized_crop(im, (x0, y0, x0 + w, y0 + h), size), ref)


def test_same_seed_gives_the_reference_crops():
    aug_fast = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 6, 64, 32)
    aug_ref = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 6, 64, 32, augmentation="reference")
    for seed, name in enumerate(PHOTOS * 2):
        im = photo(name)
        with seeded_rng(seed):
            fast = aug_fast(im)
        with seeded_rng(seed):
            ref = aug_ref(im)
        assert [(c.shape, c.dtype, c.is_contiguous()) for c in fast] == [(c.shape, c.dtype, True) for c in ref]
        for f, r in zip(fast, ref):
            assert psnr(to_levels(f), to_levels(r)) > 38


# ---------------------------------------------------------------- crop statistics


def crop_stats(aug: DataAugmentationDINO, paths, seeds) -> np.ndarray:
    crops = []
    for seed, path in zip(seeds, paths):
        with seeded_rng(seed):
            crops.extend(aug(aug.load(path)))
    x = torch.cat([c.flatten(1) for c in crops], 1)
    return np.stack([x.mean(1).numpy(), x.std(1).numpy()])


@pytest.mark.parametrize("size", [(160, 120), (480, 360)])  # full decode; JPEGs decoded at 1/4
def test_crop_mean_and_std_match_the_reference(tmp_path, size):
    paths = []
    for name in PHOTOS:
        paths.append(tmp_path / f"{name}.jpg")
        photo(name, size).save(paths[-1], quality=92)
    kwargs = dict(global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), local_crops_number=8,
                  global_crops_size=32, local_crops_size=16)
    fast, ref = DataAugmentationDINO(**kwargs), DataAugmentationDINO(**kwargs, augmentation="reference")
    assert fast.pipeline.reduction(*size) == (1 if size[0] == 160 else 4)
    seeds = range(32)  # 32 images x 10 crops
    s_fast = crop_stats(fast, paths * 8, seeds)
    s_ref = crop_stats(ref, paths * 8, seeds)
    np.testing.assert_allclose(s_fast, s_ref, atol=0.02)  # normalised units (about 1.2 levels)


# ---------------------------------------------------------------- reduced JPEG decoding


def test_reduction_keeps_every_crop_at_least_its_output_size():
    aug = fa.FastAugmentationDINO((0.4, 1.0), (0.05, 0.4), 8, 224, 96)
    assert aug.reduction(854, 480) == 1 and aug.reduction(4032, 3024) == 4 and aug.reduction(8000, 6000) == 8
    no_local = fa.FastAugmentationDINO((0.4, 1.0), (0.05, 0.4), 0, 224, 96)
    assert no_local.reduction(4032, 3024) == 8
    for w, h in [(4032, 3024), (3024, 4032), (2000, 700), (1700, 1300), (6000, 300)]:
        d = aug.reduction(w, h)
        with seeded_rng(0):
            for _ in range(300):
                for scale, size in (((0.4, 1.0), 224), ((0.05, 0.4), 96)):
                    _, _, ch, cw = fa.sample_crop(h, w, scale)
                    assert min(ch, cw) >= d * size
                    assert fa.min_crop_side(h, w, scale) <= min(ch, cw)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_reduced_jpeg_decode_maps_geometry_to_the_full_image(tmp_path, orientation):
    # 203 x 150 stored: not multiples of 4, so the partial last block matters when EXIF mirrors an axis.
    stored = photo("astronaut", (203, 150))
    path = tmp_path / "x.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif)
    full = load_image(path)
    decoded = fa.load_reduced(path, lambda w, h: 4)
    assert decoded.scale == 4 and decoded.full_size == full.size
    assert decoded.image.mode == "RGB" and decoded.image.size == tuple(-(-n // 4) for n in full.size)
    # A crop through the reduced decode matches the same crop of the full decode, better than with
    # the partial-block offset ignored (it is 3/4 of a reduced pixel on mirrored axes here).
    gains = []
    for (i, j, h, w) in [(10, 20, 100, 90), (0, 0, 64, 64), (full.height - 64, full.width - 72, 64, 72)]:
        ref = np.asarray(full.crop((j, i, j + w, i + h)).resize((16, 16), Image.BICUBIC))
        scores = []
        for ox, oy in (decoded.offset, (0.0, 0.0)):
            box = (j / 4 + ox, i / 4 + oy, (j + w) / 4 + ox, (i + h) / 4 + oy)
            scores.append(psnr(fa.resized_crop(decoded.image, box, 16), ref))
        assert scores[0] > 25  # the DCT-domain reduction is a different low-pass filter
        gains.append(scores[0] - scores[1])
    if decoded.offset != (0.0, 0.0):
        assert np.mean(gains) > 1
    else:
        assert orientation == 1


def test_full_size_jpeg_decode_is_load_image_for_every_orientation(tmp_path):
    stored = photo("chelsea", (61, 45))
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.jpg"
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(path, quality=90, exif=exif)
        decoded = fa.load_reduced(path, lambda w, h: 1)
        full = load_image(path)
        assert decoded.scale == 1 and decoded.full_size == full.size and decoded.image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(full))


# ---------------------------------------------------------------- bad and unusual input


def test_bad_files_are_skipped_and_modes_give_rgb_crops(tmp_path):
    rng = np.random.default_rng(0)
    big = photo("coffee", (480, 360))
    good = tmp_path / "a_good.jpg"
    big.save(good, quality=90)
    raw = good.read_bytes()
    (tmp_path / "b_truncated.jpg").write_bytes(raw[: len(raw) // 3])  # big enough for a reduced decode
    (tmp_path / "c_zero.jpg").write_bytes(b"")
    (tmp_path / "d_junk.png").write_bytes(b"not an image")
    big.convert("L").save(tmp_path / "e_gray.jpg")
    big.convert("CMYK").save(tmp_path / "f_cmyk.jpg")
    big.convert("P", palette=Image.ADAPTIVE).save(tmp_path / "g_palette.png")
    Image.fromarray((rng.random((90, 120)) * 65535).astype(np.uint16)).save(tmp_path / "h_16bit.png")
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 2, 32, 16)
    ds = ImageFilesDataset(tmp_path, aug)
    names = [p.name for p in ds.paths]
    crops, skipped = ds[names.index("b_truncated.jpg")]
    assert skipped == tuple(str(tmp_path / n) for n in ("b_truncated.jpg", "c_zero.jpg", "d_junk.png"))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 2
    for name in ("a_good.jpg", "e_gray.jpg", "f_cmyk.jpg", "g_palette.png", "h_16bit.png"):
        crops, skipped = ds[names.index(name)]
        assert skipped == () and all(c.dtype == torch.float32 and c.shape[0] == 3 for c in crops)
        decoded = aug.load(tmp_path / name)
        full = load_image(tmp_path / name)
        assert decoded.image.mode == "RGB" and decoded.full_size == full.size
        if decoded.scale == 1:  # everything but the large JPEGs: exactly today's decode
            np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(full))
        else:
            small = np.asarray(full.resize(decoded.image.size, Image.BOX))
            assert psnr(np.asarray(decoded.image), small) > 25
    assert aug.load(tmp_path / "e_gray.jpg").scale == 4  # reduced, and RGB like today's


def test_the_fast_jpeg_path_runs_and_falls_back_only_on_decoder_errors(tmp_path, monkeypatch):
    photo("coffee", (480, 360)).save(tmp_path / "big.jpg", quality=90)
    photo("coffee", (48, 36)).save(tmp_path / "small.png")
    raw = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    plain, drafts = [], []
    real_load_image, real_draft = fa.load_image, JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(fa, "load_image", lambda path: plain.append(Path(path).name) or real_load_image(path))
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, *a: drafts.append(a) or real_draft(self, *a))
    decoded = fa.load_reduced(tmp_path / "big.jpg", lambda w, h: 4)
    # The JPEG went through libjpeg's 1/4 scaling, never through the plain decoder.
    assert plain == [] and drafts == [("RGB", (120, 90))] and decoded.scale == 4 and decoded.image.size == (120, 90)
    assert fa.load_reduced(tmp_path / "small.png", lambda w, h: 4).scale == 1 and plain == ["small.png"]
    with pytest.raises(ImageError, match="truncated.jpg"):  # the plain decoder names the broken file
        fa.load_reduced(tmp_path / "truncated.jpg", lambda w, h: 4)
    assert plain == ["small.png", "truncated.jpg"]

    # A bug in the fast path (here: the reduction rule) is not hidden by the fallback.
    def broken(w, h):
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        fa.load_reduced(tmp_path / "big.jpg", broken)


def test_one_reduced_decoder_serves_training_and_huge_images(tmp_path, monkeypatch):
    photo("chelsea", (256, 192)).save(tmp_path / "x.jpg", quality=90)
    calls = []
    real = images.load_jpeg_reduced
    monkeypatch.setattr(images, "load_jpeg_reduced", lambda *a: calls.append(a[0]) or real(*a))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 49152 px > 8000: a "bomb" for Image.open
    image = images.load_image(tmp_path / "x.jpg", min_size=(40, 30))
    # 1/4 (64 x 48) is the smallest scale covering 40 px both ways; 1/8 (32 x 24) would not.
    assert image.size == (64, 48) and len(calls) == 1
    assert images.load_jpeg_reduced(tmp_path / "x.jpg", lambda w, h: 4).image.tobytes() == image.tobytes()
    assert images.load_jpeg_reduced(tmp_path / "x.jpg", lambda w, h: 2) is None  # 128 x 96 still above the cap


# ---------------------------------------------------------------- resume: augmentations a function of (seed, epoch, index)


@pytest.mark.parametrize("augmentation", ["fast", "reference"])
def test_items_depend_only_on_seed_epoch_index(tmp_path, augmentation):
    textured_images(tmp_path, 6)
    photo("chelsea", (480, 360)).save(tmp_path / "big.jpg")  # one reduced decode for the fast pipeline
    aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 1, 16, 8, augmentation=augmentation)
    batches = {}
    for workers in (0, 2):
        ds = ImageFilesDataset(tmp_path, aug, seed=3)
        loader = build_loader(ds, batch_size=3, num_workers=workers, rank=0, world_size=1, seed=3)
        loader.sampler.set_epoch(2)
        ds.set_epoch(2)
        batches[workers] = [crops for crops, _ in loader]
    for b0, b2 in zip(batches[0], batches[2]):
        assert all(torch.equal(x, y) for x, y in zip(b0, b2))
    ds = ImageFilesDataset(tmp_path, aug, seed=3)
    ds.set_epoch(2)
    first = ds[6][0]
    ds.set_epoch(0)
    ds.set_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(first, ds[6][0]))


def test_loader_workers_start_after_this_process_used_opencv_threads(tmp_path):
    # A process whose OpenCV thread pool has run (the app, a notebook, an earlier test) forks the loader's
    # workers: OpenCV's thread count must not be changed inside a forked worker, where it deadlocks. A hang
    # shows here as the child killed by the timeout, not as a suite that never ends.
    import subprocess
    import sys
    import textwrap

    textured_images(tmp_path, 6)
    script = textwrap.dedent(f"""
        import cv2, numpy as np
        from train.augment import DataAugmentationDINO
        from train.data import ImageFilesDataset, build_loader
        image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8)
        for _ in range(3):
            cv2.GaussianBlur(image, (0, 0), 3)  # the pool's threads start in this process
        aug = DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), 1, 16, 8)
        loader = build_loader(ImageFilesDataset({str(tmp_path)!r}, aug, seed=0), batch_size=3, num_workers=2,
                              rank=0, world_size=1, seed=0)
        print(sum(1 for _ in loader), cv2.getNumThreads())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "1"]  # both batches came back; workers (and this process) use one thread
