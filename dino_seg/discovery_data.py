"""The object-discovery benchmarks by name: image lists and ground truth as TokenCut and LOST read them.

Saliency (TokenCut's get_saliency.py): ECSSD, DUTS-TE and DUT-OMRON, an image folder and a mask folder.
CorLoc (LOST's datasets.py): VOC07 and VOC12 trainval from VOCdevkit, and COCO20k, the 19,817 train2014 images
of LOST's datasets/coco_20k_filenames.txt with boxes from instances_train2014.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .groundtruth import read_voc_boxes
from .images import ImageError


class DatasetError(UserError):
    """A benchmark's files are missing or unreadable (one line naming what was expected)."""


@dataclass(frozen=True)
class Benchmark:
    """What a benchmark name sets: where its files are, how its ground truth is read, how it is scored."""

    name: str
    kind: str  # "saliency" (masks; maxFβ, IoU, Acc) or "corloc" (boxes)
    preprocess: str  # the paper's input: get_saliency.py resizes, LOST and main_tokencut.py pad
    folder: str  # under --data_path
    layout: str  # the expected layout, for the one-line error


BENCHMARKS = {
    "ecssd": Benchmark("ecssd", "saliency", "resize", "ECSSD", "ECSSD/img/*.jpg and ECSSD/gt/*.png"),
    "duts-te": Benchmark("duts-te", "saliency", "resize", "DUTS_Test",
                         "DUTS_Test/img/*.jpg and DUTS_Test/gt/*.png"),
    "dut-omron": Benchmark("dut-omron", "saliency", "resize", "DUT_OMRON",
                           "DUT_OMRON/img/*.jpg and DUT_OMRON/gt/*.png"),
    "voc07": Benchmark("voc07", "corloc", "pad", "VOC2007",
                       "VOC2007/VOCdevkit/VOC2007/{ImageSets/Main/trainval.txt,JPEGImages,Annotations}"),
    "voc12": Benchmark("voc12", "corloc", "pad", "VOC2012",
                       "VOC2012/VOCdevkit/VOC2012/{ImageSets/Main/trainval.txt,JPEGImages,Annotations}"),
    "coco20k": Benchmark("coco20k", "corloc", "pad", "COCO",
                         "coco_20k_filenames.txt (from LOST's datasets/), COCO/images/train2014/*.jpg and "
                         "COCO/annotations/instances_train2014.json"),
}
COCO20K_LIST = "coco_20k_filenames.txt"
COCO20K_IMAGES = 19_817


@dataclass
class BenchmarkItem:
    """One image of a benchmark and its ground truth."""

    image: Path
    key: str  # the image's name without suffix (output folder)
    gt_mask: Path | None = None  # saliency: the mask PNG
    gt_boxes: list[list[float]] | None = None  # CorLoc: [x0, y0, x1, y1] per object, pixels, x1/y1 exclusive


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise DatasetError(f"--benchmark: expected one of {', '.join(BENCHMARKS)}, got {name!r}")
    return BENCHMARKS[name]


def _missing(bench: Benchmark, root: Path, what: str) -> DatasetError:
    return DatasetError(f"--data_path {root}: {bench.name} {what}; expected {bench.layout} under it")


def _saliency_items(bench: Benchmark, root: Path) -> list[BenchmarkItem]:
    img_dir, gt_dir = root / bench.folder / "img", root / bench.folder / "gt"
    if not img_dir.is_dir() or not gt_dir.is_dir():
        raise _missing(bench, root, f"folders {img_dir} and {gt_dir} not found")
    # get_saliency.py: sorted(os.listdir(img_dir)), mask = name with .jpg replaced by .png
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise _missing(bench, root, f"no image in {img_dir}")
    items = [BenchmarkItem(p, p.stem, gt_mask=gt_dir / f"{p.stem}.png") for p in images]
    lacking = [it.image.name for it in items if not it.gt_mask.is_file()]
    if lacking:
        raise _missing(bench, root, f"{len(lacking)} of {len(items)} images have no mask in {gt_dir} "
                                    f"(first: {lacking[0]})")
    return items


def read_saliency_gt(path: str | Path) -> np.ndarray:
    """A saliency mask as get_saliency.py reads it: 8-bit grayscale (H, W) uint8, any non-zero pixel foreground."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("L"))
    except (OSError, ValueError) as err:
        raise ImageError(f"{path}: cannot read the mask ({err})") from None


def _voc_items(bench: Benchmark, root: Path, no_hard: bool) -> list[BenchmarkItem]:
    year = "2007" if bench.name == "voc07" else "2012"
    candidates = [root / bench.folder / "VOCdevkit" / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    base = next((c for c in candidates if (c / "ImageSets" / "Main" / "trainval.txt").is_file()), None)
    if base is None:
        raise _missing(bench, root, "ImageSets/Main/trainval.txt not found")
    ids = [line.strip() for line in (base / "ImageSets" / "Main" / "trainval.txt").read_text().splitlines()
           if line.strip()]
    items, lacking = [], []
    for i in ids:
        image, xml = base / "JPEGImages" / f"{i}.jpg", base / "Annotations" / f"{i}.xml"
        if not image.is_file() or not xml.is_file():
            lacking.append(i)
            continue
        boxes = read_voc_boxes(xml, no_hard)
        if no_hard and not boxes:
            continue  # LOST --no_hard: images left without objects are not counted
        items.append(BenchmarkItem(image, i, gt_boxes=boxes))
    if lacking:
        raise _missing(bench, root, f"{len(lacking)} of the {len(ids)} trainval images lack their JPEG or XML "
                                    f"(first: {lacking[0]})")
    return items


def _coco_items(bench: Benchmark, root: Path) -> list[BenchmarkItem]:
    listing = next((p for p in (root / COCO20K_LIST, root / "datasets" / COCO20K_LIST) if p.is_file()), None)
    ann = root / "COCO" / "annotations" / "instances_train2014.json"
    if listing is None or not ann.is_file():
        raise _missing(bench, root, f"{COCO20K_LIST} or {ann} not found")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]  # train2014/COCO_...jpg
    images_dir = root / "COCO" / "images"
    try:
        coco = json.loads(ann.read_text())
        by_id = {int(a["id"]): a for a in coco["images"]}
        boxes: dict[int, list[list[float]]] = {}
        for a in coco["annotations"]:
            if a.get("iscrowd", 0) == 1:
                continue  # LOST's extract_gt_COCO(remove_iscrowd=True)
            x, y, w, h = a["bbox"]
            # LOST: [x, y, x + w, y + h], each rounded to an integer
            boxes.setdefault(int(a["image_id"]), []).append([float(round(v)) for v in (x, y, x + w, y + h)])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{ann}: not a COCO instances file ({err})") from None
    items, lacking = [], []
    for name in names:
        image_id = int(Path(name).stem.split("_")[-1])  # LOST: the number after the last underscore
        path = images_dir / name
        if image_id not in by_id or not path.is_file():
            lacking.append(name)
            continue
        items.append(BenchmarkItem(path, Path(name).stem, gt_boxes=boxes.get(image_id, [])))
    if lacking:
        raise _missing(bench, root, f"{len(lacking)} of the {len(names)} listed images are missing from "
                                    f"{images_dir} or {ann.name} (first: {lacking[0]})")
    return items


def load_benchmark(name: str, root: str | Path, no_hard: bool = False) -> tuple[Benchmark, list[BenchmarkItem]]:
    """The benchmark called `name` under `root` (--data_path) and its images in the reference order."""
    bench, root = get_benchmark(name), Path(root)
    if not root.is_dir():
        raise DatasetError(f"--data_path {root}: no such folder; expected {bench.layout} under it")
    if bench.kind == "saliency":
        return bench, _saliency_items(bench, root)
    if bench.name in ("voc07", "voc12"):
        return bench, _voc_items(bench, root, no_hard)
    return bench, _coco_items(bench, root)


def available_benchmarks(root: str | Path) -> list[str]:
    """The benchmark names found under `root`: complete for the saliency sets and VOC; for COCO20k its list,
    annotation file and image folder present (parsing the 300-MB instances file is left to the run itself)."""
    root, found = Path(root), []
    for name in BENCHMARKS:
        if name == "coco20k":
            if ((root / COCO20K_LIST).is_file() or (root / "datasets" / COCO20K_LIST).is_file()) and \
                    (root / "COCO" / "annotations" / "instances_train2014.json").is_file() and \
                    (root / "COCO" / "images" / "train2014").is_dir():
                found.append(name)
            continue
        try:
            load_benchmark(name, root)
        except (DatasetError, ImageError):
            continue
        found.append(name)
    return found
