"""Folding eval-mode BatchNorm into the linear map in front of it."""

import torch
from torch import nn


@torch.no_grad()
def fold_batchnorm(
    layer: nn.Conv2d | nn.Linear, norm: nn.modules.batchnorm._BatchNorm
) -> nn.Identity:
    """Rewrite ``layer`` so that ``layer(x) == norm(layer(x))`` with norm's running statistics.

    BN(Wx + b) = γ·(Wx + b − μ)/√(σ² + ε) + β = (sW)x + s(b − μ) + β, s = γ/√(σ² + ε).
    Returns the Identity that replaces ``norm``.
    """
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
    layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))))
    layer.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)
    return nn.Identity()
