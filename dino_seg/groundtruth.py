"""Ground truth of images: which file belongs to an image, and readers for mask PNGs and PASCAL VOC XML boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .images import ImageError
from .labels import VOID_LABEL, read_label_png


def find_ground_truth(gt_dir: str | Path, rel: str | Path, *, flat: bool = True, xml: bool = False) -> Path | None:
    """The ground-truth file of the image at `rel` (its path under the image root), or None.

    Subfolders first: `gt_dir/<rel's folder>/` is searched before `gt_dir/` itself, which is searched only
    when `flat` (see `ground_truth_files`: not when several images share the stem). In a folder the
    candidates are the mask `<stem>.png`, then with `xml` `<stem>.xml` and `Annotations/<stem>.xml` (a VOC
    root). Masks are PNGs only (DAVIS, VOC, the saliency sets): a folder of JPEG images given as its own
    ground truth must not score each image against itself."""
    gt_dir, rel = Path(gt_dir), Path(rel)
    folders = [gt_dir / rel.parent] if rel.parent != Path(".") else []
    if flat or not folders:
        folders.append(gt_dir)
    names = [f"{rel.stem}.png"] + ([f"{rel.stem}.xml", f"Annotations/{rel.stem}.xml"] if xml else [])
    for folder in folders:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def ground_truth_files(gt_dir: str | Path, images: Iterable[Path], root: Path, *, xml: bool = False
                       ) -> dict[Path, Path | None]:
    """`find_ground_truth` for each image under `root`: {image: file or None}.

    An image in a subfolder falls back to `gt_dir/<stem>.*` only when no other image has its stem, so
    `a/x.jpg` and `b/x.jpg` never both score against `gt_dir/x.png` (one of them would be wrong)."""
    images = list(images)
    rels = {p: (p.relative_to(root) if p != root else Path(p.name)) for p in images}
    stems = Counter(p.stem for p in images)
    return {p: find_ground_truth(gt_dir, rels[p], flat=rels[p].parent == Path(".") or stems[p.stem] == 1, xml=xml)
            for p in images}


def load_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A ground-truth mask as (foreground, void) boolean arrays (H, W).

    Palette PNGs (PASCAL VOC, DAVIS 2017): every index but 0 is foreground, 255 is void.
    Grayscale or RGB masks (DAVIS 2016 0/255, 0/1 binaries): any non-zero value is foreground.
    """
    mask = read_label_png(path, what="mask", error=ImageError, binary_255="object", accept="any")
    return (mask.labels > 0) & ~mask.void, mask.void


def read_gt_objects(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Ground-truth objects of a mask PNG: (one boolean mask per object, void mask).

    Palette PNGs: each index but 0 and 255 (void) is one object. Other modes: all non-zero pixels are one object.
    """
    mask = read_label_png(path, what="mask", error=ImageError, binary_255="object", accept="any")
    if mask.palette:
        ids = [int(i) for i in np.unique(mask.labels) if i not in (0, VOID_LABEL)]
        return [mask.labels == i for i in ids], mask.void
    fg = mask.labels > 0
    return ([fg] if fg.any() else []), mask.void


def read_voc_boxes(path: str | Path, no_hard: bool = False) -> list[list[float]]:
    """Object boxes of a PASCAL VOC annotation XML, [x0, y0, x1, y1] in pixel coordinates.

    VOC corners are 1-based inclusive pixel indices: as LOST does, xmin and ymin lose 1, so
    (1, W) covers the whole width [0, W). Difficult and truncated objects are kept (LOST's default),
    or left out with `no_hard` (LOST's --no_hard).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        raise ImageError(f"{path}: cannot read VOC annotation ({err})") from None
    boxes = []
    for obj in root.iter("object"):
        if no_hard and any(obj.findtext(flag, "0").strip() == "1" for flag in ("truncated", "difficult")):
            continue
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ImageError(f"{path}: an object's bndbox lacks numeric xmin/ymin/xmax/ymax") from None
        boxes.append([x0 - 1, y0 - 1, x1, y1])
    return boxes
