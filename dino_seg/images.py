"""Reading images of any common mode (grayscale, RGBA, palette, 16-bit) as 8-bit RGB."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dino_seg.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


JPEG_REDUCTIONS = (8, 4, 2)  # libjpeg's DCT scalings (1/8, 1/4, 1/2), largest first
DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # what Pillow raises for a file it cannot decode


class ImageError(UserError):
    """An image file that is missing or cannot be decoded."""


@dataclass
class DecodedImage:
    """An image as decoded for cropping: possibly reduced by libjpeg's DCT scaling.

    `image` is 8-bit RGB, EXIF-oriented, `scale` times smaller than the oriented full-resolution image
    of size `full_size` (W, H); a point x of the full image is x / scale + offset in `image`
    (`offset` is non-zero only on axes that EXIF orientation mirrors, where the partial last
    block of the reduced decode lands on the image's start)."""

    image: Image.Image
    full_size: tuple[int, int]
    scale: int = 1
    offset: tuple[float, float] = (0.0, 0.0)


# EXIF orientation -> (oriented x comes from stored axis 0=x/1=y, mirrored?), same for oriented y.
_ORIENTATION_AXES = {
    1: ((0, False), (1, False)), 2: ((0, True), (1, False)), 3: ((0, True), (1, True)),
    4: ((0, False), (1, True)), 5: ((1, False), (0, False)), 6: ((1, True), (0, False)),
    7: ((1, True), (0, True)), 8: ((1, False), (0, True)),
}


def check_sizes(sizes: int | Sequence[int], flag: str, patch_size: int) -> list[int]:
    """A "one or two sizes" flag (--image_size, --resize) as a list: one size resizes the short side and keeps the
    aspect ratio, two are H W (torchvision's Resize takes `size[0]` or `size` alike); each must cover a patch.
    UserError naming `flag` otherwise."""
    size = [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]
    if len(size) not in (1, 2) or min(size) < patch_size:
        raise UserError(f"{flag}: expected one or two sizes of at least the patch size {patch_size}, got {size}")
    return size


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
        reduced = _covering_jpeg(path, min_size) if min_size else None
        if reduced is None:
            raise ImageError(f"{path}: too large to decode safely ({err})") from None
        return reduced
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (expected PNG, JPEG, BMP, TIFF or WebP)") from None
    except DECODE_ERRORS as err:
        raise ImageError(f"{path}: cannot decode image ({err})") from None


def _covering_jpeg(path: Path, min_size: tuple[int, int]) -> Image.Image | None:
    """A JPEG at the largest libjpeg reduction still covering `min_size` (W, H) both ways (EXIF may
    rotate it by 90 degrees), or None when it is no JPEG, cannot be decoded or is still too large."""
    side = max(min_size)
    try:
        decoded = load_jpeg_reduced(path, lambda w, h: next((d for d in JPEG_REDUCTIONS if min(w, h) // side >= d), 1))
    except DECODE_ERRORS:
        return None
    return decoded.image if decoded is not None else None


def load_jpeg_reduced(path: str | Path, reduction: Callable[[int, int], int]) -> DecodedImage | None:
    """A JPEG decoded at 1/`reduction(W, H)` of its size (1, 2, 4 or 8; W, H: the EXIF-oriented full size)
    by libjpeg's DCT scaling (`Image.draft`), as 8-bit RGB, EXIF-oriented: the pixels of `load_image`
    at full size.

    None when `path` is no JPEG, or when even the reduced decode is above PIL's decompression-bomb
    limit (Image.MAX_IMAGE_PIXELS). A file that claims to be a JPEG but cannot be decoded raises one of
    DECODE_ERRORS, as Pillow does. A JPEG that is already RGB and upright is returned as decoded (no
    copies for the transposition and the RGB conversion)."""
    from PIL import JpegImagePlugin

    try:
        img = JpegImagePlugin.JpegImageFile(str(path))  # the plugin itself runs no bomb check
    except SyntaxError:  # "not a JPEG file"
        return None
    with img:
        stored = img.size
        axes = _ORIENTATION_AXES.get(img.getexif().get(0x0112, 1), _ORIENTATION_AXES[1])
        full = (stored[axes[0][0]], stored[axes[1][0]])
        d = reduction(*full)
        scale, offset = 1, (0.0, 0.0)
        if d > 1:
            # Asking for stored // d makes libjpeg pick exactly the scale d (1/2, 1/4, 1/8).
            drafted = img.draft("RGB", (max(stored[0] // d, 1), max(stored[1] // d, 1)))
            if drafted is not None:
                scale = round(stored[0] / drafted[1][2])
                reduced = [-(-n // scale) for n in stored]  # libjpeg's ceil(n / scale)
                offset = tuple(reduced[axis] - stored[axis] / scale if mirrored else 0.0 for axis, mirrored in axes)
        if Image.MAX_IMAGE_PIXELS is not None and img.width * img.height > Image.MAX_IMAGE_PIXELS:
            return None
        img.load()
        if img.mode != "RGB" or axes != _ORIENTATION_AXES[1]:
            img = to_rgb(ImageOps.exif_transpose(img) or img)
        return DecodedImage(img, full, scale, offset)


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder by suffix, sorted by path."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
