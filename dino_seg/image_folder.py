"""Labelled images of an ImageFolder root (`train/` and `val/`, one sub-folder per class) and the
evaluation transforms of the reference eval_knn.py / eval_linear.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms

from .errors import UserError
from .images import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, load_image

SPLITS = ("train", "val")


class DataFolderError(UserError):
    """An ImageFolder root that does not have the expected layout."""


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _class_folders(split: Path) -> list[Path]:
    return sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class LabelledImages:
    """(path, label) pairs of one split, sorted by class then path as torchvision's ImageFolder."""

    root: Path
    classes: tuple[str, ...]  # label i is classes[i]: the training split's sorted class folders
    samples: tuple[tuple[Path, int], ...]

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64 labels in sample order."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


def _scan(split: Path, classes: list[str], flag: str) -> LabelledImages:
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = split / name
        if not folder.is_dir():
            continue  # a validation split may lack some classes
        files = sorted(p for p in folder.rglob("*") if _is_image(p))
        if not files:
            raise DataFolderError(f"{flag}: class folder {folder} holds no image "
                                  f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})")
        samples.extend((p, label) for p in files)
    return LabelledImages(split, tuple(classes), tuple(samples))


def find_splits(root: str | Path, flag: str = "--data_path") -> tuple[LabelledImages, LabelledImages]:
    """The train and val splits of an ImageFolder root, labelled by the training split's classes.

    Unlike two independent torchvision ImageFolders (as the reference builds them), a validation
    split missing a class keeps the training labels, and a validation class unknown to the
    training split is an error rather than a silently shifted label.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFolderError(f"{flag}: {root} is not a folder (expected an ImageFolder root with train/ and val/)")
    for name in SPLITS:
        if not (root / name).is_dir():
            raise DataFolderError(f"{flag}: {root} has no {name}/ folder (expected {root}/train/<class>/*.jpg "
                                  f"and {root}/val/<class>/*.jpg)")
    classes = [p.name for p in _class_folders(root / "train")]
    if not classes:
        raise DataFolderError(f"{flag}: {root / 'train'} has no class folders (expected train/<class>/*.jpg)")
    unknown = [p.name for p in _class_folders(root / "val") if p.name not in set(classes)]
    if unknown:
        raise DataFolderError(f"{flag}: class {unknown[0]!r} of {root / 'val'} is not in {root / 'train'}"
                              + (f" ({len(unknown)} such classes)" if len(unknown) > 1 else ""))
    train, val = _scan(root / "train", classes, flag), _scan(root / "val", classes, flag)
    if not val.samples:
        raise DataFolderError(f"{flag}: {root / 'val'} holds no images")
    return train, val


def eval_transform(resize_size: int = 256, crop_size: int = 224) -> Callable:
    """The reference's validation transform: Resize(256, bicubic), CenterCrop(224), ToTensor, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize(resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(crop_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def train_transform(crop_size: int = 224) -> Callable:
    """eval_linear.py's training transform: RandomResizedCrop(224), horizontal flip, ToTensor, normalisation."""
    return transforms.Compose([
        transforms.RandomResizedCrop(crop_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class LabelledDataset(Dataset):
    """Item i: (transform(image i), label i). An unreadable image raises ImageError naming the file."""

    def __init__(self, split: LabelledImages, transform: Callable) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.split.samples[index]
        return self.transform(load_image(path)), label


__all__ = ["DataFolderError", "LabelledDataset", "LabelledImages", "eval_transform", "find_splits",
           "train_transform"]
