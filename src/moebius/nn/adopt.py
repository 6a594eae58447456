"""Third-party networks (diffusers' VAE and UNet) on this package's kernels.

:func:`adopt` swaps a network's ``nn.Conv2d``, ``nn.Linear`` and ``nn.GroupNorm`` modules for
drop-in subclasses, in place: the same parameters, checkpoint keys and results (to float
rounding), but channels-last maps and matrix products run on the engines chosen for this machine
(:mod:`moebius.nn.engines`) and channels-last GroupNorm takes stable statistics
(:func:`moebius.nn.fusion.group_norm`). Channels-first inputs run exactly as before.
"""

import torch
from torch import nn

from moebius.nn.engines import Linear, conv2d
from moebius.nn.fusion import group_norm


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


_SWAPS = {nn.Conv2d: Conv2d, nn.Linear: Linear, nn.GroupNorm: GroupNorm}


def adopt(network: nn.Module) -> nn.Module:
    """Swap ``network``'s convolutions, linear layers and GroupNorms in place; returns it."""
    for module in network.modules():
        swap = _SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
    return network
