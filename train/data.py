"""Training images from any folder (unreadable files skipped and reported), augmented with per-sample seeds."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from dino_seg.errors import UserError
from dino_seg.images import IMAGE_SUFFIXES, ImageError, load_image


def check_data_path(root: str | Path) -> Path:
    """--data_path as a folder, or the one-line error saying what it is instead (checked before anything prints)."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, f"--data_path: {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"--data_path: {root} is not a folder (expected a folder of images)")
    return root


def find_images(root: str | Path) -> list[Path]:
    """All image files under `root`, recursively (symbolic links followed, hidden entries skipped),
    sorted by path: an ImageFolder tree (`root/class/img.jpg`) or any folder of images."""
    root = check_data_path(root)
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(Path(dirpath) / f for f in filenames
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"--data_path: no images found in {root} "
                         f"(looked recursively for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(paths)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for the augmentation of sample `index` in `epoch`."""
    state = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU generators, restoring their states on exit, so that
    augmenting in the main process (num_workers 0) leaves the training's random stream alone."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # CPU only: torchvision transforms draw from it
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class ImageFilesDataset(Dataset):
    """Images of a folder through a transform; item i is (transform(image), skipped paths).

    An image that cannot be decoded is replaced by the next readable one (so batches stay full and
    the order stays deterministic) and its path is returned in `skipped` for the caller to report.
    The augmentation of item i in epoch e is seeded from (seed, e, i): independent of the number of
    workers and of which worker loads it, which makes resumed runs see the same crops. A transform with
    a `load(path)` method decodes its own files (the fast augmentation decodes JPEGs reduced); others
    get `load_image`'s PIL image.
    """

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], object], seed: int = 0) -> None:
        self.root = Path(root)
        self.paths = find_images(self.root)
        self.transform = transform
        self.load = getattr(transform, "load", load_image)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set before creating the epoch's iterator: workers get a copy of the dataset at that point."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[object, tuple[str, ...]]:
        skipped: list[str] = []
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            try:
                image = self.load(path)
            except (ImageError, Image.DecompressionBombError):
                skipped.append(str(path))
                continue
            with seeded_rng(sample_seed(self.seed, self.epoch, index)):
                return self.transform(image), tuple(skipped)
        raise UserError(f"--data_path: none of the {len(self.paths)} images in {self.root} can be decoded")


def collate_crops(batch: Sequence[tuple[list[torch.Tensor], tuple[str, ...]]]
                  ) -> tuple[list[torch.Tensor], list[str]]:
    """Stack each view over the batch: a list of (B, 3, H_v, W_v), plus all skipped paths."""
    n_views = len(batch[0][0])
    crops = [torch.stack([sample[0][v] for sample in batch]) for v in range(n_views)]
    return crops, [p for sample in batch for p in sample[1]]


def seed_worker(worker_id: int, seed: int, rank: int) -> None:
    """Seed a loader worker from (seed, epoch, rank, worker), for anything the per-sample seeds miss."""
    info = get_worker_info()
    epoch = getattr(info.dataset, "epoch", 0) if info is not None else 0
    state = np.random.SeedSequence([seed % 2**64, epoch, rank, worker_id]).generate_state(2, dtype=np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))
    torch.manual_seed((int(state[0]) << 32) | int(state[1]))


def build_loader(dataset: ImageFilesDataset, *, batch_size: int, num_workers: int, rank: int,
                 world_size: int, seed: int, pin_memory: bool = False) -> DataLoader:
    """Shuffled loader over this process's share of the data (a DistributedSampler seeded by
    `seed` + epoch, also in single-process runs, so the order is restored on resume), dropping the
    last incomplete batch like the reference. Call `loader.sampler.set_epoch` and
    `dataset.set_epoch` before each epoch."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    if num_workers > 0:
        # Workers get one OpenCV thread each, as torch gives them, so N workers do not run N x cores threads.
        # It is set here, before the workers fork: cv2.setNumThreads in a forked worker deadlocks once this
        # process's OpenCV thread pool has run (the pool's threads do not survive the fork); the workers
        # inherit the setting. This process does no augmentation while workers exist.
        cv2.setNumThreads(1)
    if len(sampler) < batch_size:
        raise UserError(f"--batch_size_per_gpu: {batch_size} is more than the {len(sampler)} images each of "
                         f"the {world_size} process(es) gets from {len(dataset)} in {dataset.root}")
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        collate_fn=collate_crops,
        worker_init_fn=partial(seed_worker, seed=seed, rank=rank),
        persistent_workers=False,  # workers must be re-created each epoch to see the new epoch
    )
