"""The DINO projection head and the multi-crop wrapper that feeds crops of each resolution together."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose weight is g * v / ||v|| per output row.

    Same parameters and state-dict keys (`weight_g` (out, 1), `weight_v` (out, in)) as the reference's
    `nn.utils.weight_norm(nn.Linear(..., bias=False))`, without the deprecated hook-based
    implementation (which breaks `copy.deepcopy` and DDP in recent torch versions).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)  # reuse torch's default init of v
        # Registered in weight_norm's order (g, then v); weight_norm initialises g to ||v||, the
        # reference then fills it with 1.
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))  # (out, 1)
        self.weight_v = nn.Parameter(linear.weight.detach().clone())  # (out, in)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (in_dim -> hidden -> ... -> bottleneck), L2 normalisation, weight-normalised last layer.

    Keys match the reference `vision_transformer.DINOHead`: `mlp.*` and `last_layer.weight_{g,v}`.
    """

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            # The norm stays 1: only the direction of each output row is learnt.
            self.last_layer.weight_g.requires_grad = False

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)  # (N, bottleneck)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)  # (N, out_dim)


class MultiCropWrapper(nn.Module):
    """Backbone + head over a list of crops: consecutive crops of the same resolution go through the
    backbone in one batch, then the head runs once on all the features.

    Input: a list of (B, 3, H_i, W_i) tensors (or one tensor); output: (sum of batch sizes, out_dim),
    crops in input order. State-dict keys: `backbone.*` and `head.*` as the reference.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        # The reference drops ImageNet classifiers this way; our backbones have none, but keep the
        # wrapper safe for a torchvision model passed as is.
        for name in ("fc", "head"):
            if isinstance(getattr(backbone, name, None), nn.Linear):
                setattr(backbone, name, nn.Identity())
        self.backbone = backbone
        self.head = head

    def forward(self, x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        crops = x if isinstance(x, (list, tuple)) else [x]
        outputs = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            out = self.backbone(torch.cat(list(crops[start:end])))  # (n * B, D)
            if isinstance(out, tuple):  # some backbones return (features, extras)
                out = out[0]
            outputs.append(out)
            start = end
        return self.head(torch.cat(outputs))  # (N, out_dim)
