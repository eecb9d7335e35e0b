"""The linear probe of the reference eval_linear.py: frozen-backbone features and a linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import as_backbone
from .errors import UserError
from .models import is_vit


def probe_defaults(arch: str) -> tuple[int, bool]:
    """(n_last_blocks, avgpool_patchtokens) of the paper's linear evaluations: ViT-B uses the last
    block's [CLS] plus the averaged patch tokens, the smaller ViTs the [CLS] of the last 4 blocks."""
    return (1, True) if arch == "vit_base" else (4, False)


def intermediate_layers(model: nn.Module, images: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The tokens (B, P + h*w, D) after each of the last `n` blocks, each through the final norm,
    as the reference's `get_intermediate_layers` (P = [CLS] plus registers)."""
    return as_backbone(model).intermediate_layers(images, n)


def probe_dim(model: nn.Module, n_last_blocks: int, avgpool_patchtokens: bool) -> int:
    """Width of `probe_features`' output."""
    if not is_vit(model):
        return int(model.embed_dim)
    return int(model.embed_dim) * (n_last_blocks + int(avgpool_patchtokens))


def check_probe_flags(model: nn.Module, n_last_blocks: int, avgpool_patchtokens: bool) -> None:
    """Raise ValueError for flag combinations the reference cannot compute."""
    if is_vit(model) and avgpool_patchtokens and n_last_blocks != 1:
        # The reference stacks [CLS] and the average as (B, D, 2): defined for one block only.
        raise UserError(f"--avgpool_patchtokens true needs --n_last_blocks 1 (got {n_last_blocks}), as in "
                         "the reference, whose concatenation is defined for one block")
    if is_vit(model) and not 1 <= n_last_blocks <= as_backbone(model).depth:
        raise UserError(f"--n_last_blocks: expected 1 to {as_backbone(model).depth}, got {n_last_blocks}")


@torch.no_grad()
def probe_features(model: nn.Module, images: torch.Tensor, n_last_blocks: int = 4,
                   avgpool_patchtokens: bool = False) -> torch.Tensor:
    """Frozen features (B, probe_dim) of images (B, 3, H, W) for the linear classifier.

    ViT: the [CLS] tokens of the last `n_last_blocks` blocks concatenated; with `avgpool_patchtokens`
    the last block's mean patch token is interleaved with its [CLS] ([cls_0, avg_0, cls_1, avg_1, ...]),
    as the reference's cat-on-a-new-axis then reshape gives: the order official linear weights expect.
    ResNet-50: the pooled 2048-d output.
    """
    if not is_vit(model):
        return model(images)
    check_probe_flags(model, n_last_blocks, avgpool_patchtokens)
    layers = intermediate_layers(model, images, n_last_blocks)
    out = torch.cat([x[:, 0] for x in layers], dim=-1)  # (B, n * D)
    if avgpool_patchtokens:
        avg = layers[-1][:, as_backbone(model).num_prefix_tokens:].mean(dim=1)  # (B, D), registers left out
        out = torch.stack((out, avg), dim=-1).reshape(out.shape[0], -1)  # (B, 2D), interleaved
    return out


class LinearClassifier(nn.Module):
    """A linear layer on frozen features: weights N(0, 0.01), bias 0 (state-dict keys linear.weight/bias)."""

    def __init__(self, dim: int, num_labels: int = 1000) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.linear = nn.Linear(dim, num_labels)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # (B, num_labels)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of the targets are among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, kmax)
    hits = top == targets[:, None]
    return [int(hits[:, :k].sum()) for k in ks]


def train_probe_epoch(model: nn.Module, classifier: nn.Module, batches, optimizer: torch.optim.Optimizer, *,
                      n_last_blocks: int, avgpool_patchtokens: bool, device: torch.device,
                      on_step=None) -> dict[str, float]:
    """One pass of the linear classifier over `batches` of (images, labels), the backbone frozen:
    cross-entropy, one optimiser step per batch (as the reference's `train`). Returns the mean loss
    over the steps and the learning rate. `on_step(loss)` is called after each step."""
    classifier.train()
    criterion = nn.CrossEntropyLoss()
    total, steps = 0.0, 0
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        feats = probe_features(model, images, n_last_blocks, avgpool_patchtokens)  # (B, probe_dim)
        loss = criterion(classifier(feats), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.item())
        total += value
        steps += 1
        if on_step is not None:
            on_step(value)
    if steps == 0:
        raise ValueError("the training loader yielded no batch")
    return {"loss": total / steps, "lr": float(optimizer.param_groups[0]["lr"])}


@torch.no_grad()
def evaluate_probe(model: nn.Module, classifier: nn.Module, batches, *, n_last_blocks: int,
                   avgpool_patchtokens: bool, device: torch.device) -> torch.Tensor:
    """Sums over `batches` as a float64 tensor [loss * B, top-1 hits, top-5 hits, images] (ready to
    all-reduce across processes before dividing)."""
    classifier.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = classifier(probe_features(model, images, n_last_blocks, avgpool_patchtokens))  # (B, C)
        hit1, hit5 = topk_correct(logits, labels, (1, 5))
        sums += torch.tensor([float(criterion(logits, labels)), hit1, hit5, labels.shape[0]],
                             dtype=torch.float64, device=device)
    return sums
