"""DINO multi-crop augmentation: two global crops and N local crops, the fast pipeline (default) or the
reference's PIL transforms."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from dino_seg.errors import UserError
from dino_seg.images import IMAGENET_MEAN, IMAGENET_STD, load_image
from train.fast_augment import DecodedImage, FastAugmentationDINO
from train.flags import AUGMENTATIONS


class GaussianBlur:
    """Gaussian blur of a PIL image with probability `p`, radius uniform in [radius_min, radius_max]."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.prob = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        # Blur when random() <= p, as the reference: p = 1.0 always blurs.
        if random.random() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.prob}, radius=({self.radius_min}, {self.radius_max}))"


class Solarization:
    """PIL solarisation (invert pixels above 128) with probability `p`."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class DataAugmentationDINO:
    """An image -> list of 2 + local_crops_number normalised float32 tensors, two global crops (3, G, G)
    then the local crops (3, L, L), with the reference `DataAugmentationDINO`'s distribution.

    `augmentation="fast"` (the default): `FastAugmentationDINO`, uint8 arrays and reduced JPEG decoding,
    the reference's random parameters for the same seed. `"reference"`: the reference's PIL transforms
    exactly. `load(path)` decodes a file as the pipeline wants it (`ImageFilesDataset` calls it);
    `__call__` also takes a PIL image.
    """

    def __init__(self, global_crops_scale: Sequence[float] = (0.4, 1.0),
                 local_crops_scale: Sequence[float] = (0.05, 0.4), local_crops_number: int = 8,
                 global_crops_size: int = 224, local_crops_size: int = 96, augmentation: str = "fast") -> None:
        for flag, scale in (("--global_crops_scale", global_crops_scale), ("--local_crops_scale", local_crops_scale)):
            if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
                raise UserError(f"{flag}: expected two numbers 0 < min <= max <= 1, got {tuple(scale)}")
        if local_crops_number < 0:
            raise UserError(f"--local_crops_number: expected 0 or more, got {local_crops_number}")
        if augmentation not in AUGMENTATIONS:
            raise UserError(f"--augmentation: expected one of {', '.join(AUGMENTATIONS)}, got {augmentation!r}")
        self.augmentation = augmentation
        pipeline = FastAugmentationDINO if augmentation == "fast" else ReferenceAugmentationDINO
        self.pipeline = pipeline(tuple(global_crops_scale), tuple(local_crops_scale), local_crops_number,
                                 global_crops_size, local_crops_size)
        self.local_crops_number = local_crops_number

    def load(self, path: str | Path) -> Image.Image | DecodedImage:
        """The image file as `__call__` takes it: fully decoded for the reference pipeline, JPEGs
        reduced to what the crops need for the fast one. Raises `ImageError` as `load_image`."""
        if isinstance(self.pipeline, FastAugmentationDINO):
            return self.pipeline.load(path)
        return load_image(path)

    def __call__(self, image: Image.Image | DecodedImage) -> list[torch.Tensor]:
        if isinstance(image, DecodedImage) and isinstance(self.pipeline, ReferenceAugmentationDINO):
            if image.scale != 1:
                raise ValueError("the reference augmentation crops full-resolution images, got a reduced decode")
            image = image.image
        return self.pipeline(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(augmentation={self.augmentation!r})"


class ReferenceAugmentationDINO:
    """PIL image -> list of 2 + local_crops_number normalised tensors: two global crops
    (3, G, G) then the local crops (3, L, L): the reference `DataAugmentationDINO`, PIL image by image.

    Global crop 1 is always blurred; global crop 2 is blurred with p 0.1 and solarised with p 0.2;
    local crops are blurred with p 0.5. All crops get flip, colour jitter (p 0.8) and grayscale (p 0.2).
    """

    def __init__(self, global_crops_scale: Sequence[float] = (0.4, 1.0),
                 local_crops_scale: Sequence[float] = (0.05, 0.4), local_crops_number: int = 8,
                 global_crops_size: int = 224, local_crops_size: int = 96) -> None:
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply(
                [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        bicubic = InterpolationMode.BICUBIC
        self.global_transfo1 = transforms.Compose([
            transforms.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=bicubic),
            flip_and_color_jitter,
            GaussianBlur(1.0),
            normalize,
        ])
        self.global_transfo2 = transforms.Compose([
            transforms.RandomResizedCrop(global_crops_size, scale=tuple(global_crops_scale), interpolation=bicubic),
            flip_and_color_jitter,
            GaussianBlur(0.1),
            Solarization(0.2),
            normalize,
        ])
        self.local_crops_number = local_crops_number
        self.local_transfo = transforms.Compose([
            transforms.RandomResizedCrop(local_crops_size, scale=tuple(local_crops_scale), interpolation=bicubic),
            flip_and_color_jitter,
            GaussianBlur(p=0.5),
            normalize,
        ])

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops.extend(self.local_transfo(image) for _ in range(self.local_crops_number))
        return crops
