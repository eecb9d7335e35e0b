"""Reading images of any common mode (grayscale, RGBA, palette, 16-bit) as 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


class ImageError(ValueError):
    """An image file that is missing or cannot be decoded."""


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """Convert a PIL image or an array (H, W), (H, W, 3|4), any integer or float dtype, to 8-bit RGB.

    Alpha is dropped as `Image.convert("RGB")` in the reference scripts does; 16-bit and
    float data are scaled to 8 bits instead of being clipped (PIL would saturate them).
    """
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[..., :3]
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_rgb(np.asarray(image))
    return image.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:  # the usual [0, 1] float image
            return np.round(arr * 255).astype(np.uint8)
        return np.round((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    # Integer data wider than 8 bits: scale by the dtype's range when values use it
    # (16-bit PNGs), else by the values' own maximum (PIL's 32-bit "I" mode of a 16-bit file).
    arr = arr.astype(np.int64)
    hi = int(arr.max()) if arr.size else 0
    top = 65535 if hi > 255 and hi <= 65535 else max(hi, 255)
    return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)


def load_image(path: str | Path, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file as 8-bit RGB, honouring its EXIF orientation.

    An image above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, twice over) raises ImageError,
    unless it is a JPEG and `min_size` (width, height: the least the caller needs) lets libjpeg decode it
    reduced (1/2, 1/4 or 1/8) to a size within the limit.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, expected an image file")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except Image.DecompressionBombError as err:
        reduced = _reduced_jpeg(path, min_size) if min_size else None
        if reduced is None:
            raise ImageError(f"{path}: too large to decode safely ({err})") from None
        return reduced
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (expected PNG, JPEG, BMP, TIFF or WebP)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def _reduced_jpeg(path: Path, min_size: tuple[int, int]) -> Image.Image | None:
    """A JPEG decoded at the smallest libjpeg scale still covering `min_size` (either orientation), or None
    when the file is no JPEG or even that is above the decompression-bomb limit."""
    from PIL import JpegImagePlugin

    side = max(min_size)  # EXIF may rotate the image by 90 degrees: cover the need both ways
    try:
        img = JpegImagePlugin.JpegImageFile(str(path))  # the plugin itself runs no bomb check
    except (OSError, SyntaxError, ValueError):
        return None
    with img:
        img.draft("RGB", (side, side))  # libjpeg picks the largest reduction that stays >= the size asked
        if Image.MAX_IMAGE_PIXELS is not None and img.width * img.height > Image.MAX_IMAGE_PIXELS:
            return None
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder by suffix, sorted by path."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
