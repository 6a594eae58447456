"""Inference-time rewrites: folding eval-mode BatchNorm, and the plain/fast path switch.

Every module with a ``plain`` attribute has two exact implementations of the same
maths: the plain one (the formulas as written in the paper, on (B, C, H, W) maps)
and a fast one (token-major layout, fewer copies, cheaper contraction orders).
The fast path is the default at inference; training always runs the plain path.
``set_plain(model, True)`` selects the plain path everywhere, e.g. to measure
speed-ups against it or to debug. ``set_export(model, True)`` makes the fast path take the
export forms where it has them (:mod:`moebius.nn.export_forms`), for tracing into ONNX.
"""

import torch
import torch.nn.functional as F
from torch import nn

from moebius.nn import engines
from moebius.nn.engines import linear
from moebius.nn.kernels import ACTIVATIONS


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


def set_plain(model: nn.Module, plain: bool = True) -> nn.Module:
    """Select the plain (``True``) or fast (``False``) implementation in every sub-module."""
    for module in model.modules():
        if hasattr(module, "plain"):
            module.plain = plain
    return model


def set_export(model: nn.Module, export: bool = True) -> nn.Module:
    """Select the export forms (``True``) or the eager fast path in every sub-module."""
    for module in model.modules():
        if hasattr(module, "export"):
            module.export = export
    return model


def is_plain(model: nn.Module) -> bool:
    """True when any sub-module runs its plain implementation."""
    return any(getattr(module, "plain", False) for module in model.modules())


def pointwise(
    tokens: torch.Tensor,
    conv: nn.Conv2d | nn.Linear,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(conv(tokens)) + residual`` for a 1×1 conv (or Linear) on (..., C) tokens,
    as one matrix product (see :func:`moebius.nn.engines.linear`)."""
    return linear(tokens, conv.weight, conv.bias, activation=activation, residual=residual)


def norm_tokens(tokens: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """An eval-mode BatchNorm (or the Identity left by folding) on (..., C) tokens."""
    if isinstance(norm, nn.Identity):
        return tokens
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return torch.addcmul(norm.bias - norm.running_mean * scale, tokens, scale)


def group_norm(
    x: torch.Tensor,
    norm: nn.GroupNorm,
    activation: str | None = None,
    added: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(norm(x + added))``, ``added`` one value per image and channel (b, c), (1, c)
    for every image alike, or None; channels-last maps on the formulation fastest here, both
    with statistics that stay exact when a group's mean is large against its spread, and
    ``added`` in the same passes (:func:`moebius.nn.engines.group_norm`)."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return engines.group_norm(x, norm, activation, added)
    if added is not None:
        x = x + added.reshape(*added.shape, *([1] * (x.dim() - 2)))
    y = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return y if activation is None else ACTIVATIONS[activation](y, inplace=True)
