"""Third-party networks (diffusers' VAE and UNet) on this package's kernels.

:func:`adopt` swaps a network's ``nn.Conv2d``, ``nn.Linear`` and ``nn.GroupNorm`` modules, and
diffusers' ``Upsample2D``, for drop-in subclasses, in place: the same parameters, checkpoint
keys and results (to float rounding), but channels-last maps and matrix products run on the
engines chosen for this machine (:mod:`moebius.nn.engines`), channels-last GroupNorm takes
stable statistics (:func:`moebius.nn.fusion.group_norm`) and a nearest ×2 then 3×3 convolution
runs on the small map without gradients (:func:`moebius.nn.sampling.upsample_by_phases`).
Channels-first inputs run exactly as before, up-sampling aside.
"""

import functools

import torch
from torch import nn

from moebius.nn.engines import Linear, conv2d
from moebius.nn.fusion import group_norm
from moebius.nn.sampling import by_phases, upsample_by_phases


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose channels-last maps run on the chosen engine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros" and x.is_contiguous(memory_format=torch.channels_last):
            return conv2d(x, self)
        return super().forward(x)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with stable statistics on channels-last maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self)


@functools.cache
def _upsample2d() -> type:
    """diffusers' ``Upsample2D`` with the exact ×2 of its usual configuration (nearest, then a
    3×3 convolution, no norm) computed by phases; built on first use, diffusers being imported
    only by the networks that come from it."""
    from diffusers.models.upsampling import Upsample2D as Diffusers

    class Upsample2D(Diffusers):
        def forward(self, hidden_states, output_size=None, *args, **kwargs):
            usual = (
                self.interpolate
                and self.use_conv
                and self.name == "conv"
                and self.norm is None
                and not self.use_conv_transpose
                and not args
                and not kwargs
            )
            if usual and by_phases(hidden_states, self.conv, output_size):
                return upsample_by_phases(hidden_states, self.conv)
            return super().forward(hidden_states, output_size, *args, **kwargs)

    return Upsample2D


_SWAPS = {nn.Conv2d: Conv2d, nn.Linear: Linear, nn.GroupNorm: GroupNorm}


def _swap(module: nn.Module) -> type | None:
    kind = type(module)
    if kind.__name__ == "Upsample2D" and kind.__module__.startswith("diffusers."):
        return _upsample2d()
    return _SWAPS.get(kind)


def adopt(network: nn.Module) -> nn.Module:
    """Swap ``network``'s convolutions, linear layers, GroupNorms and up-samplers in place;
    returns it."""
    for module in network.modules():
        swap = _swap(module)
        if swap is not None:
            module.__class__ = swap
    return network
