"""DAVIS files: sequence lists, frames read like the reference, annotations and indexed PNG outputs."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from dino_seg import names
from dino_seg.errors import UserError
from dino_seg.files import save_png
from dino_seg.labels import VOID_LABEL, read_label_png
from dino_seg.viz import davis_palette

# eval_video_segmentation.py's color_normalize: note the 0.228 (ImageNet's is 0.229), kept for fidelity.
DAVIS_MEAN = (0.485, 0.456, 0.406)
DAVIS_STD = (0.228, 0.224, 0.225)
RESOLUTIONS = names.DAVIS_RESOLUTIONS


class DavisError(UserError):
    """Bad DAVIS input; the message is one line naming the path or value at fault."""


def _check_root(root: str | Path, resolution: str) -> Path:
    root = Path(root)
    if resolution not in RESOLUTIONS:
        raise DavisError(f"unknown DAVIS resolution {resolution!r}: expected one of {', '.join(RESOLUTIONS)}")
    if not root.is_dir():
        raise DavisError(f"DAVIS root not found: {root} (expected a folder holding JPEGImages/ and Annotations/)")
    if not (root / "JPEGImages" / resolution).is_dir():
        raise DavisError(f"no frames folder {root / 'JPEGImages' / resolution} in the DAVIS root")
    return root


def _read_set_file(path: Path) -> list[str]:
    names: list[str] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        token = line.split()[0]
        # DAVIS 2016's ImageSets/480p/<set>.txt lists frames ("/JPEGImages/480p/bear/00000.jpg /Annotations/...")
        # rather than sequences: the sequence is the frame's folder.
        name = Path(token).parent.name if "/" in token else token
        if name and name not in names:
            names.append(name)
    return names


def list_sequences(root: str | Path, subset: str = "val", resolution: str = "480p") -> list[str]:
    """Sequence names from ImageSets/2017/<subset>.txt, else ImageSets/480p/<subset>.txt, else every frame folder."""
    root = _check_root(root, resolution)
    for candidate in (root / "ImageSets" / "2017" / f"{subset}.txt", root / "ImageSets" / "480p" / f"{subset}.txt"):
        if candidate.is_file():
            names = _read_set_file(candidate)
            if not names:
                raise DavisError(f"sequence list {candidate} is empty")
            return names
    names = sorted(p.name for p in (root / "JPEGImages" / resolution).iterdir() if p.is_dir())
    if not names:
        raise DavisError(f"no sequence folders in {root / 'JPEGImages' / resolution}")
    return names


def frame_paths(root: str | Path, sequence: str, resolution: str = "480p") -> list[Path]:
    """Sorted JPEG frames of one sequence (the reference globs *.jpg and sorts)."""
    folder = Path(root) / "JPEGImages" / resolution / sequence
    if not folder.is_dir():
        raise DavisError(f"sequence folder not found: {folder}")
    frames = sorted(folder.glob("*.jpg"))
    if not frames:
        raise DavisError(f"sequence without frames: no .jpg files in {folder}")
    return frames


def annotation_dir(root: str | Path, sequence: str, resolution: str = "480p") -> Path:
    return Path(root) / "Annotations" / resolution / sequence


def annotation_paths(root: str | Path, sequence: str, resolution: str = "480p") -> list[Path]:
    """Sorted ground-truth PNGs of one sequence (what davis2017-evaluation scores)."""
    folder = annotation_dir(root, sequence, resolution)
    masks = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not masks:
        raise DavisError(f"no annotation PNGs in {folder}")
    return masks


def resized_shape(height: int, width: int, short_side: int = 480) -> tuple[int, int]:
    """(H, W) of the network input: short side `short_side`, long side floored to a multiple of 64 (reference)."""
    if height > width:
        tw = short_side
        th = int(((tw * height) / width // 64) * 64)
    else:
        th = short_side
        tw = int(((th * width) / height // 64) * 64)
    if th < 64 or tw < 64:
        raise DavisError(f"frame of {width}x{height} is too small for a {short_side}-pixel short side")
    return th, tw


def read_frame(path: str | Path, short_side: int = 480) -> tuple[torch.Tensor, int, int]:
    """Frame as the reference reads it: (3, H, W) float tensor, plus the original height and width."""
    img = cv2.imread(str(path))  # BGR uint8
    if img is None:
        raise DavisError(f"cannot read frame {path}: missing or not an image")
    ori_h, ori_w = img.shape[:2]
    th, tw = resized_shape(ori_h, ori_w, short_side)
    img = cv2.resize(img, (tw, th))  # bilinear, as the reference's default
    img = img.astype(np.float32) / 255.0
    img = np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))  # BGR -> RGB, (3, H, W)
    x = torch.from_numpy(img)
    for channel, m, s in zip(x, DAVIS_MEAN, DAVIS_STD):
        channel.sub_(m).div_(s)
    return x, ori_h, ori_w


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file without decoding it."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except (OSError, ValueError) as exc:
        raise DavisError(f"cannot read image {path}: {exc}") from None


def read_annotation(path: str | Path) -> np.ndarray:
    """(H, W) uint8 object indices: DAVIS 2017 palette PNGs as stored (0 background, k object k, 255 void);
    DAVIS 2016 0/255 grayscale masks become 0/1 (one object)."""
    return read_label_png(path, what="annotation", error=DavisError, binary_255="object").labels


def num_objects(annotation: np.ndarray) -> int:
    """Largest object index, void ignored (davis2017-evaluation counts objects this way in the first frame)."""
    labels = np.where(annotation == VOID_LABEL, 0, annotation)
    return int(labels.max())


def first_frame_labels(annotation: np.ndarray, frame_hw: tuple[int, int], patch_size: int,
                       n_objects: int | None = None) -> torch.Tensor:
    """(1 + n_objects, H/patch, W/patch) one-hot labels of the first frame at feature resolution.

    The reference resizes the annotation with nearest neighbour to the patch grid (PIL) and one-hot encodes it.
    Void (255) is treated as background here: the reference would propagate it as a 256th object.
    """
    th, tw = frame_hw
    labels = np.where(annotation == VOID_LABEL, 0, annotation).astype(np.uint8)
    n = num_objects(annotation) if n_objects is None else n_objects
    small = np.array(Image.fromarray(labels).resize((tw // patch_size, th // patch_size), Image.NEAREST))
    small_t = torch.from_numpy(small.astype(np.int64))  # (h, w)
    one_hot = torch.nn.functional.one_hot(small_t.clamp(max=n), num_classes=n + 1)  # (h, w, C)
    return one_hot.permute(2, 0, 1).float().contiguous()  # (C, h, w)


def write_indexed_png(path: str | Path, labels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write (H, W) labels 0..255 as a palette PNG with the DAVIS colours, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DavisError(f"indexed PNG {path} needs a 2-D label map, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DavisError(f"indexed PNG {path} needs labels in 0..255")
    save_png(path, labels.astype(np.uint8), davis_palette() if palette is None else palette)
