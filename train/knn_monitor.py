"""k-NN accuracy of the teacher backbone while training (--knn_data_path), without touching the training."""

from __future__ import annotations

import sys

from torch import nn
from tqdm import tqdm

from dino_seg.errors import UserError
from dino_seg.image_folder import LabelledDataset, eval_transform, find_splits
from dino_seg.knn import extract_features, knn_classifier


class KnnMonitor:
    """Checks the k-NN data once at start-up, then evaluates a backbone on it when due.

    Every process extracts its share of the features; rank 0 votes. The backbone is run in eval
    mode (its previous mode restored) under no_grad, and the global RNG is left as it was, so the
    training goes on exactly as without the monitor.
    """

    def __init__(self, data_path: str, *, crop_size: int, k: int, temperature: float, freq: int,
                 batch_size: int, num_workers: int, is_main: bool) -> None:
        if freq < 1:
            raise UserError(f"--knn_freq: expected a positive number of epochs, got {freq}")
        train, val = find_splits(data_path, flag="--knn_data_path")
        if not 1 <= k <= len(train.samples):
            raise UserError(f"--knn_k {k}: k must be between 1 and the {len(train.samples)} training images "
                             f"of {train.root}")
        # Resize to 256/224 of the crop as the reference's Resize(256) + CenterCrop(224).
        transform = eval_transform(round(crop_size * 256 / 224), crop_size)
        self.train_set, self.val_set = LabelledDataset(train, transform), LabelledDataset(val, transform)
        self.train_labels, self.val_labels = train.labels, val.labels
        self.num_classes = len(train.classes)
        self.k, self.temperature, self.freq = k, temperature, freq
        self.batch_size, self.num_workers, self.is_main = batch_size, num_workers, is_main

    def describe(self) -> str:
        return (f"k-NN monitor: {len(self.train_set)} train and {len(self.val_set)} val images, "
                f"{self.num_classes} classes, k {self.k}, every {self.freq} epoch(s)")

    def due(self, epoch: int, epochs: int) -> bool:
        return (epoch + 1) % self.freq == 0 or epoch == epochs - 1

    def evaluate(self, backbone: nn.Module, device) -> dict[str, float] | None:
        """{"knn_top1", "knn_top5"} in percent on rank 0, None on the other ranks."""
        feats = []
        for name, dataset in (("train", self.train_set), ("val", self.val_set)):
            def bar(loader, name=name):
                return tqdm(loader, desc=f"k-NN features {name}", unit="batch", leave=False,
                            disable=not self.is_main, file=sys.stderr, dynamic_ncols=True)
            feats.append(extract_features(backbone, dataset, batch_size=self.batch_size,
                                          num_workers=self.num_workers, device=device, wrap=bar))
        if feats[0] is None:
            return None
        top1, top5 = knn_classifier(feats[0], self.train_labels, feats[1], self.val_labels, self.k, self.temperature,
                                    num_classes=self.num_classes)
        return {"knn_top1": top1, "knn_top5": top5}
