"""DINO multi-crop augmentation on uint8 arrays (OpenCV, torch's uint8 resize) with reduced JPEG decoding:
the reference pipeline's parameters, drawn from the same generators in the same order, several times faster."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as TF
from PIL import Image
from torchvision import transforms

from dino_seg.images import (DECODE_ERRORS, IMAGENET_MEAN, IMAGENET_STD, JPEG_REDUCTIONS, DecodedImage,
                             load_image, load_jpeg_reduced)

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range, as the reference uses

# Pillow's RGB -> L weights (Convert.c's L24: 19595, 38470, 7471 / 65536). With this one-row matrix
# cv2.transform rounds half to even where Pillow rounds half up: 136 of the 2^24 colours differ, by 1.
# (A three-row matrix takes a lower-precision path: about 1% of photo pixels off by 1.)
_GRAY1 = np.array([[19595.0, 38470.0, 7471.0]]) / 65536.0
_LEVELS = np.arange(256, dtype=np.float32)


def load_reduced(path: str | Path, reduction: Callable[[int, int], int]) -> DecodedImage:
    """Decode `path` as 8-bit RGB like `dino_seg.images.load_image`, JPEGs at 1/`reduction(W, H)` of
    their size through `load_jpeg_reduced`.

    Other formats, and a JPEG that libjpeg cannot decode (a decoder error only: a bug still raises),
    go through `load_image`, so unreadable files raise the same `ImageError` and other formats decode
    exactly as there."""
    try:
        decoded = load_jpeg_reduced(path, reduction)
    except DECODE_ERRORS:  # the plain decoder decides, and names the error
        decoded = None
    if decoded is not None:
        return decoded
    image = load_image(path)
    return DecodedImage(image, image.size)


def sample_crop(height: int, width: int, scale: Sequence[float],
                ratio: Sequence[float] = RATIO) -> tuple[int, int, int, int]:
    """(i, j, h, w) of a random resized crop: torchvision's `RandomResizedCrop.get_params`
    transcribed, the same torch draws in the same order, for an image known only by its size."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    return _fallback_crop(height, width, ratio)


def _fallback_crop(height: int, width: int, ratio: Sequence[float]) -> tuple[int, int, int, int]:
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def min_crop_side(height: int, width: int, scale: Sequence[float], ratio: Sequence[float] = RATIO) -> int:
    """The smallest width or height `sample_crop` can return for this image size."""
    area = height * width
    sides = [round(math.sqrt(area * scale[0] * min(ratio))), round(math.sqrt(area * scale[0] / max(ratio)))]
    _, _, h, w = _fallback_crop(height, width, ratio)
    return min(sides + [h, w])


# ---------------------------------------------------------------- pixel operations (uint8 (H, W, 3) RGB)


def _blend_lut(degenerate: float, factor: float) -> np.ndarray:
    """Pillow's Image.blend(degenerate, image, factor) on one value, in its single-precision
    arithmetic: trunc(d + f * (v - d)), clipped to [0, 255]."""
    out = np.float32(degenerate) + np.float32(factor) * (_LEVELS - np.float32(degenerate))
    return np.clip(out, 0, 255).astype(np.uint8)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Brightness: blend with black."""
    return cv2.LUT(img, _blend_lut(0.0, factor))


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Contrast: blend with the rounded mean of the image's luma (Pillow's L)."""
    mean = int(cv2.mean(cv2.transform(img, _GRAY1))[0] + 0.5)
    return cv2.LUT(img, _blend_lut(mean, factor))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Color: blend with the image's luma as RGB. Pillow truncates; OpenCV rounds to the
    nearest, so the offset -0.4999 turns its rounding into truncation (off only for fractions >= 0.9999;
    a smaller offset would drown in OpenCV's single-precision error)."""
    return cv2.addWeighted(img, factor, to_grayscale(img), 1.0 - factor, -0.4999)


def adjust_hue(img: np.ndarray, factor: float) -> np.ndarray:
    """torchvision's PIL adjust_hue: hue (a byte per turn) shifted by int(factor * 255), wrapping.
    OpenCV's full-range 8-bit HSV counts 256 steps per turn and rounds where Pillow's 255 truncate."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(int(factor * 255) % 256)  # uint8 arithmetic wraps, as the reference's
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """Pillow's L as three equal channels (torchvision's rgb_to_grayscale(num_output_channels=3))."""
    return cv2.cvtColor(cv2.transform(img, _GRAY1), cv2.COLOR_GRAY2RGB)


def pillow_blur_kernel(radius: float, passes: int = 3) -> np.ndarray:
    """The 1-d kernel of Pillow's GaussianBlur(radius): `passes` extended box blurs (BoxBlur.c, Gwosdek et
    al. 2011) whose variances add up to radius^2, each box with Pillow's 24-bit fixed-point weights,
    convolved into one kernel."""
    r = np.float32(radius)
    sigma2 = np.float32(r * r / np.float32(passes))
    big_l = np.float32(np.sqrt(12.0 * sigma2 + 1.0))  # box length
    l = np.float32(np.floor((big_l - 1.0) / 2.0))  # integer part of the box radius
    a = np.float32((2 * l + 1) * (l * (l + 1) - 3 * sigma2))
    a = np.float32(a / (6 * (sigma2 - (l + 1) * (l + 1))))  # fractional part
    box_radius = np.float32(l + a)
    whole = int(box_radius)
    ww = int((1 << 24) / (box_radius * 2 + 1))
    fw = ((1 << 24) - (whole * 2 + 1) * ww) // 2
    box = np.array([fw] + [ww] * (2 * whole + 1) + [fw], np.float64) / (1 << 24)
    kernel = box
    for _ in range(passes - 1):
        kernel = np.convolve(kernel, box)
    return kernel.astype(np.float32)


def gaussian_blur(img: np.ndarray, radius: float) -> np.ndarray:
    """Pillow's GaussianBlur(radius) (`ImageFilter.GaussianBlur`, the reference's blur): its three box
    blurs as one separable kernel, edges replicated. Pillow rounds to 8 bits after each of its six
    passes and replicates each intermediate's edge: up to 3 levels apart inside, more within
    3 (radius + 1) pixels of the border."""
    k = pillow_blur_kernel(radius)
    return cv2.sepFilter2D(img, -1, k, k, borderType=cv2.BORDER_REPLICATE)


_SOLARIZE = np.where(np.arange(256) < 128, np.arange(256), 255 - np.arange(256)).astype(np.uint8)
_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_INV_STD_255 = 1 / (torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255)


def solarize(img: np.ndarray) -> np.ndarray:
    """ImageOps.solarize(img, 128): levels from 128 up inverted."""
    return cv2.LUT(img, _SOLARIZE)


def to_normalized_tensor(img: np.ndarray) -> torch.Tensor:
    """ToTensor then Normalize(ImageNet): (H, W, 3) uint8 -> contiguous (3, H, W) float32, as
    (v - 255 mean) / (255 std), within 1e-6 of the reference's (v / 255 - mean) / std."""
    out = torch.empty((3, img.shape[0], img.shape[1]))
    out.copy_(torch.from_numpy(img).permute(2, 0, 1))
    return out.sub_(_MEAN_255).mul_(_INV_STD_255)


_JITTER = {0: adjust_brightness, 1: adjust_contrast, 2: adjust_saturation, 3: adjust_hue}


def resized_crop(source: torch.Tensor | Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """The (x0, y0, x1, y1) box of `source` resized to (size, size) with antialiased bicubic
    interpolation (Pillow's filter, a = -0.5, support scaled with the reduction), without reading
    outside the box as the reference's crop-then-resize.

    An integer box on a (H, W, 3) uint8 tensor goes through torch's channels-last uint8 kernel (within
    1 of Pillow); a fractional box (a crop mapped onto a reduced decode) through Pillow's resize with a box."""
    if isinstance(source, torch.Tensor):
        x0, y0, x1, y1 = (int(v) for v in box)
        patch = source[y0:y1, x0:x1].permute(2, 0, 1)[None]  # (1, 3, h, w) channels-last
        out = TF.interpolate(patch, size=(size, size), mode="bicubic", antialias=True)
        return out[0].permute(1, 2, 0).numpy()  # (size, size, 3), a view of contiguous memory
    x0, y0, x1, y1 = box
    ix0, iy0 = math.floor(x0), math.floor(y0)
    ix1, iy1 = min(math.ceil(x1), source.width), min(math.ceil(y1), source.height)
    region = source.crop((ix0, iy0, ix1, iy1))
    inner = (x0 - ix0, y0 - iy0, min(x1 - ix0, ix1 - ix0), min(y1 - iy0, iy1 - iy0))
    return np.array(region.resize((size, size), Image.BICUBIC, box=inner))  # writable, for torch.from_numpy


@dataclass
class CropParams:
    """Everything random about one crop, drawn as the reference's transforms draw it."""

    box: tuple[int, int, int, int]  # (i, j, h, w) in full-resolution pixels
    flip: bool
    jitter: tuple[list[int], float, float, float, float] | None  # (order, brightness, contrast, saturation, hue)
    gray: bool
    blur: float | None  # radius
    solarize: bool


class FastAugmentationDINO:
    """The reference `DataAugmentationDINO` on uint8 arrays: same crops, flips, colour-jitter order and
    factors, grayscale, blur radii and solarisation, drawn from the same generators (torch for the
    torchvision transforms, Python's `random` for blur and solarisation) in the same order, so a
    per-sample seed gives the reference's parameters. Pixels differ from the reference only by rounding
    and filter details (see tests/test_augment.py for the measured tolerances)."""

    def __init__(self, global_crops_scale: Sequence[float], local_crops_scale: Sequence[float],
                 local_crops_number: int, global_crops_size: int, local_crops_size: int) -> None:
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = local_crops_number
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        # The reference's ColorJitter, for its parameter ranges and its `get_params`.
        self.color_jitter = transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)

    # ------------------------------------------------------------ decoding

    def reduction(self, width: int, height: int) -> int:
        """The largest JPEG reduction after which every possible crop still has at least its output
        size in pixels, so no crop is upsampled that the full decode would have downsampled."""
        kinds = [(self.global_crops_scale, self.global_crops_size)]
        if self.local_crops_number:
            kinds.append((self.local_crops_scale, self.local_crops_size))
        room = min(min_crop_side(height, width, scale) / size for scale, size in kinds)
        return next((d for d in JPEG_REDUCTIONS if room >= d), 1)

    def load(self, path: str | Path) -> DecodedImage:
        """Decode a file for `__call__`, JPEGs only at the resolution the crops need."""
        return load_reduced(path, self.reduction)

    # ------------------------------------------------------------ parameters

    def sample(self, height: int, width: int, scale: Sequence[float], blur_p: float,
               solarize_p: float | None) -> CropParams:
        """One crop's parameters, in the reference's draw order: RandomResizedCrop, RandomHorizontalFlip,
        RandomApply(ColorJitter, 0.8), RandomGrayscale(0.2), GaussianBlur(p), Solarization(p)."""
        box = sample_crop(height, width, scale)
        flip = bool(torch.rand(1) < 0.5)
        jitter = None
        if not 0.8 < torch.rand(1):  # RandomApply skips when p < rand
            cj = self.color_jitter
            order, b, c, s, h = cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
            jitter = (order.tolist(), b, c, s, h)
        gray = bool(torch.rand(1) < 0.2)
        blur = random.uniform(0.1, 2.0) if random.random() <= blur_p else None
        solarize = solarize_p is not None and random.random() < solarize_p
        return CropParams(box, flip, jitter, gray, blur, solarize)

    def sample_all(self, height: int, width: int) -> list[CropParams]:
        """Parameters of all crops of one image: global 1 (blur 1.0), global 2 (blur 0.1, solarise 0.2),
        then the local crops (blur 0.5)."""
        params = [self.sample(height, width, self.global_crops_scale, 1.0, None),
                  self.sample(height, width, self.global_crops_scale, 0.1, 0.2)]
        params.extend(self.sample(height, width, self.local_crops_scale, 0.5, None)
                      for _ in range(self.local_crops_number))
        return params

    # ------------------------------------------------------------ pixels

    def render(self, decoded: DecodedImage, p: CropParams, size: int,
               source: torch.Tensor | Image.Image) -> torch.Tensor:
        """One crop (3, size, size) float32 from its parameters; `source` is `_source(decoded)`, made once
        per image."""
        i, j, h, w = p.box
        if decoded.scale == 1:
            img = resized_crop(source, (j, i, j + w, i + h), size)
        else:
            s, (ox, oy) = decoded.scale, decoded.offset
            img = resized_crop(source, (j / s + ox, i / s + oy, (j + w) / s + ox, (i + h) / s + oy), size)
        if p.flip:
            img = cv2.flip(img, 1)
        if p.jitter is not None:
            order, *factors = p.jitter
            for fn_id in order:
                img = _JITTER[fn_id](img, factors[fn_id])
        if p.gray:
            img = to_grayscale(img)
        if p.blur is not None:
            img = gaussian_blur(img, p.blur)
        if p.solarize:
            img = solarize(img)
        return to_normalized_tensor(img)  # (3, size, size)

    def __call__(self, image: DecodedImage | Image.Image) -> list[torch.Tensor]:
        decoded = image if isinstance(image, DecodedImage) else DecodedImage(image, image.size)
        width, height = decoded.full_size
        params = self.sample_all(height, width)
        source = _source(decoded)
        sizes = [self.global_crops_size] * 2 + [self.local_crops_size] * self.local_crops_number
        return [self.render(decoded, p, size, source) for p, size in zip(params, sizes)]


def _source(decoded: DecodedImage) -> torch.Tensor | Image.Image:
    """What `resized_crop` reads: a (H, W, 3) uint8 tensor for full-resolution images, the Pillow image
    for reduced ones (whose crop boxes are fractional)."""
    if decoded.scale != 1:
        return decoded.image
    with warnings.catch_warnings():  # Pillow's array is read-only; the crops only read it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(decoded.image))
