"""How an image is brought to a patch multiple for discovery: zero padding (LOST, main_tokencut.py) or
TokenCut's get_saliency.py resize (LANCZOS, each side to round(side / patch) * patch)."""

from __future__ import annotations

from PIL import Image

from . import names
from .errors import UserError

PREPROCESS = names.PREPROCESS_MODES


def check_preprocess(preprocess: str) -> str:
    if preprocess not in PREPROCESS:
        raise UserError(f"--preprocess: expected one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    return preprocess


def patch_multiple_size(width: int, height: int, patch_size: int) -> tuple[int, int]:
    """utils.resize_pil's target (width, height): each side rounded to the nearest patch multiple (Python's
    round, halves to even, as TokenCut's), at least one patch."""
    return (max(1, round(width / patch_size)) * patch_size, max(1, round(height / patch_size)) * patch_size)


def resize_to_patches(image: Image.Image, patch_size: int, size: tuple[int, int] | None = None) -> Image.Image:
    """get_saliency.py's input: the image LANCZOS-resized so both sides are patch multiples (a no-op when they are);
    `size` (width, height), when given, is rounded instead of the image's own (a --resize or the patch cap).

    Its masks go back to the original size by nearest neighbour from the patch grid, which is what
    discovery's patches_to_pixels does for any processed size."""
    size = patch_multiple_size(*(size or image.size), patch_size)
    return image if size == image.size else image.resize(size, resample=Image.LANCZOS)
