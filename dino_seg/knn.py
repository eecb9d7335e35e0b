"""Weighted k-NN classification of frozen features, the protocol of the reference eval_knn.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .distributed import gather_strided, process_group
from .errors import UserError
from .sharding import shard_indices

FEATURE_FILES = ("trainfeat.pth", "testfeat.pth", "trainlabels.pth", "testlabels.pth")
# Memory the (chunk, N_train) similarity block may take: 1.28 M training features give chunks of 50
# test images (the reference's 100 chunks of 500 ImageNet images would take 2.6 GB here).
DEFAULT_CHUNK_BYTES = 256 * 2**20
REFERENCE_CLASSES = 1000


class KnnError(UserError):
    """Inputs the k-NN classifier cannot work with (k too large, features of different widths)."""


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """This process's share of `dataset`: items rank, rank + W, rank + 2W, ... (no padding, no repeats)."""
    return dataset if world_size == 1 else Subset(dataset, shard_indices(len(dataset), rank, world_size))


@torch.no_grad()
def extract_features(model: nn.Module, dataset: Dataset, *, batch_size: int = 128, num_workers: int = 0,
                     device: torch.device | str = "cpu", wrap: Callable[[Iterable], Iterable] | None = None,
                     gather: bool = True) -> torch.Tensor | None:
    """Backbone outputs (N, D) of `dataset`'s images in dataset order, L2-normalised, on `device`.

    In a process group every process extracts its share (items rank::world_size) and, with `gather`,
    the features are gathered on rank 0 in dataset order; the other ranks get None. `model` is put in
    eval mode for the pass (BatchNorm running statistics untouched) and its mode restored after.
    `wrap` decorates the batch iterator (a progress bar).
    """
    device = torch.device(device)
    rank, world = process_group() if gather else (0, 1)
    part = shard(dataset, rank, world)
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        # fork_rng: iterating a DataLoader draws a base seed from the global generator.
        with torch.random.fork_rng(devices=[]):
            for images, _ in (wrap(loader) if wrap else loader):
                feats = model(images.to(device, non_blocking=True)).float()  # (B, D)
                chunks.append(F.normalize(feats, dim=1, p=2))
    finally:
        model.train(was_training)
    if not chunks:
        local = torch.zeros(0, _output_width(model, dataset, device), device=device)
    else:
        local = torch.cat(chunks)  # (N_rank, D)
    return local if world == 1 else gather_strided(local, len(dataset))


def _output_width(model: nn.Module, dataset: Dataset, device: torch.device) -> int:
    width = getattr(model, "embed_dim", None)
    if width is None:
        width = model(dataset[0][0][None].to(device)).shape[-1]
    return int(width)


@torch.no_grad()
def knn_classifier(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, k: int, temperature: float = 0.07, num_classes: int | None = None,
                   chunk_size: int | None = None) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent of the reference's weighted k-NN vote.

    train_features (N, D) and test_features (M, D) are L2-normalised; each test image takes its k
    most cosine-similar training images, weighted by exp(sim / temperature), and ranks the classes
    by summed weight. Top-5 counts the first min(5, k) classes of the ranking over
    max(num_classes, 1000) classes, as the reference does. Test images go in chunks of `chunk_size`
    (default: a similarity block of at most DEFAULT_CHUNK_BYTES) so memory stays bounded whatever
    the size of the sets.
    """
    n_train = train_features.shape[0]
    if train_features.shape[1] != test_features.shape[1]:
        raise KnnError(f"training features are {train_features.shape[1]}-d but test features "
                       f"{test_features.shape[1]}-d: they come from different models")
    if not 1 <= k <= n_train:
        raise KnnError(f"k = {k} needs at least k training images, there are {n_train}")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    # The reference votes over 1000 classes whatever the data set (its knn_classifier's default): with
    # few classes, or k < 5, zero-score classes past the data's own fill the top-5 in the order
    # torch's sort leaves ties. Voting over the same width keeps its top-5 figures exactly.
    width = max(num_classes, REFERENCE_CLASSES)
    device = train_features.device
    train_labels = train_labels.to(device)
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_BYTES // (4 * n_train))
    n_top5 = min(5, k)
    top1 = top5 = 0
    for start in range(0, test_features.shape[0], chunk_size):
        hit1, hit5 = _vote_chunk(train_features, train_labels, test_features[start: start + chunk_size].to(device),
                                 test_labels[start: start + chunk_size].to(device), k, temperature, width, n_top5)
        top1, top5 = top1 + hit1, top5 + hit5
    total = test_features.shape[0]
    return top1 * 100.0 / total, top5 * 100.0 / total


def _vote_chunk(train_features: torch.Tensor, train_labels: torch.Tensor, feats: torch.Tensor, targets: torch.Tensor,
                k: int, temperature: float, width: int, n_top5: int) -> tuple[int, int]:
    # A function of its own so that one chunk's similarity block is freed before the next one exists.
    similarity = feats @ train_features.T  # (B, N)
    distances, indices = similarity.topk(k, dim=1, largest=True, sorted=True)  # (B, k)
    del similarity
    neighbours = train_labels[indices]  # (B, k)
    weights = (distances / temperature).exp()
    # Summing the weights per class equals the reference's one-hot (B * k, C) product, without it.
    scores = torch.zeros(feats.shape[0], width, device=feats.device, dtype=weights.dtype)
    scores.scatter_add_(1, neighbours, weights)  # (B, C)
    predictions = scores.sort(1, True).indices[:, :n_top5]  # (B, n_top5), ties as the reference's sort
    correct = predictions == targets[:, None]
    return int(correct[:, 0].sum()), int(correct.sum())


@dataclass(frozen=True)
class Features:
    """L2-normalised features and labels of both splits, as eval_knn.py dumps them."""

    train: torch.Tensor  # (N, D)
    test: torch.Tensor  # (M, D)
    train_labels: torch.Tensor  # (N,) int64
    test_labels: torch.Tensor  # (M,) int64

    def to(self, device: torch.device | str) -> Features:
        return Features(self.train.to(device), self.test.to(device), self.train_labels.to(device),
                        self.test_labels.to(device))


def save_features(features: Features, folder: str | Path) -> None:
    """Write trainfeat.pth, testfeat.pth, trainlabels.pth and testlabels.pth (CPU tensors) atomically."""
    from .files import atomic_binary

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensor in zip(FEATURE_FILES, (features.train, features.test, features.train_labels,
                                            features.test_labels)):
        # atomic_binary, as checkpoints: a full disk is named as such, not torch's vague RuntimeError.
        with atomic_binary(folder / name) as f:
            torch.save(tensor.cpu(), f)


def load_features(folder: str | Path, expected_dim: int | None = None) -> Features:
    """Read a feature dump (ours or the reference's) without unpickling code (weights_only=True)."""
    folder = Path(folder)
    tensors = []
    for name in FEATURE_FILES:
        path = folder / name
        if not path.is_file():
            raise KnnError(f"--load_features: {path} is missing (expected {', '.join(FEATURE_FILES)} in {folder})")
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for foreign files
            raise KnnError(f"--load_features: {path} is not a readable tensor file ({type(err).__name__})") from None
        if not isinstance(value, torch.Tensor):
            raise KnnError(f"--load_features: {path} holds a {type(value).__name__}, expected a tensor")
        tensors.append(value)
    train, test, train_labels, test_labels = tensors
    for feats, labels, split in ((train, train_labels, "train"), (test, test_labels, "test")):
        if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
            raise KnnError(f"--load_features: {split} features {tuple(feats.shape)} and labels "
                           f"{tuple(labels.shape)} in {folder} do not match (expected (N, D) and (N,))")
    if train.shape[1] != test.shape[1]:
        raise KnnError(f"--load_features: train features are {train.shape[1]}-d, test features {test.shape[1]}-d")
    features = Features(train.float(), test.float(), train_labels.long(), test_labels.long())
    if expected_dim is not None:
        check_feature_width(features, expected_dim, folder)
    return features


def check_feature_width(features: Features, expected_dim: int, folder: str | Path) -> None:
    """KnnError when a dump's features are not `expected_dim`-d, the width of the model named along it."""
    if features.train.shape[1] != expected_dim:
        raise KnnError(f"--load_features: the features in {folder} are {features.train.shape[1]}-d, but this model "
                       f"outputs {expected_dim}-d features (a dump of another model?)")


def knn_accuracies(features: Features, ks: Sequence[int], temperature: float = 0.07,
                   num_classes: int | None = None, chunk_size: int | None = None) -> dict[int, tuple[float, float]]:
    """{k: (top-1, top-5)} for each k; checks every k before voting any."""
    n_train = features.train.shape[0]
    too_large = [k for k in ks if k > n_train or k < 1]
    if too_large:
        raise KnnError(f"--nb_knn {too_large[0]}: k must be between 1 and the {n_train} training images")
    return {k: knn_classifier(features.train, features.train_labels, features.test, features.test_labels, k,
                              temperature, num_classes=num_classes, chunk_size=chunk_size) for k in ks}
