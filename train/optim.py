"""Optimisers and gradient handling of the DINO recipe: parameter groups, LARS, clipping, frozen last layer."""

from __future__ import annotations

import torch
from torch import nn

from dino_seg.errors import UserError
from train.flags import OPTIMIZERS


def get_params_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights with weight decay, and biases and 1-d parameters (norms) without.

    The first group is the regularised one: the training loop sets its weight decay from the
    schedule and leaves the second at 0, as the reference does.
    """
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


class LARS(torch.optim.Optimizer):
    """LARS (layer-wise adaptive rate scaling) as in the reference (after Barlow Twins): SGD with
    momentum whose update of every tensor with more than one dimension is weight-decayed and rescaled
    to `eta * ||p|| / ||update||`; 1-d tensors (biases, norms) get neither."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one),
                                    one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, params_groups: list[dict]) -> torch.optim.Optimizer:
    """The optimiser called `name` (adamw for ViTs, sgd, lars for convnets and large batches).
    Learning rate and weight decay are set every iteration from the schedules."""
    if name == "adamw":
        return torch.optim.AdamW(params_groups)
    if name == "sgd":
        return torch.optim.SGD(params_groups, lr=0, momentum=0.9)
    if name == "lars":
        return LARS(params_groups)
    raise UserError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Clip each parameter's gradient to norm `clip` on its own (not the global norm, as the
    reference); returns the norms before clipping, (number of tensors with a gradient,)."""
    norms = []
    for p in model.parameters():
        if p.grad is None:
            continue
        param_norm = p.grad.norm(2)
        norms.append(param_norm)
        clip_coef = clip / (param_norm + 1e-6)
        # torch.where keeps this free of a device sync per tensor (the reference calls .item()).
        p.grad.mul_(torch.where(clip_coef < 1, clip_coef, torch.ones_like(clip_coef)))
    return torch.stack(norms) if norms else torch.zeros(0)


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the head's last-layer gradients during the first `freeze_last_layer` epochs: with no
    gradient the optimiser leaves those weights (and their weight decay) alone."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None
