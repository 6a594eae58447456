"""Resolution changes between UNet levels."""

import torch
import torch.nn.functional as F
from torch import nn

from moebius.nn.engines import conv2d
from moebius.nn.export_forms import upsample_conv, upsample_phase_kernel
from moebius.nn.kernels import packed


class Downsample(nn.Module):
    """3×3 conv with stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.conv)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv; ``size`` overrides ×2 to match a skip tensor.

    Without gradients an exact ×2 runs on the small map (:func:`upsample_by_phases`), except
    on the plain path (``plain``: the textbook form, as the paper counts its arithmetic).
    ``export``: the same maths with the phases interleaved by a pixel shuffle
    (:func:`moebius.nn.export_forms.upsample_conv`), for graphs whose sides halve exactly at
    every level (the pipelines' pixel multiple), where ``size`` is always ×2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.export = False
        self.plain = False

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.export:
            return upsample_conv(x, self.conv)
        if not self.plain and by_phases(x, self.conv, size):
            return upsample_by_phases(x, self.conv)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return conv2d(x, self.conv)


def by_phases(x: torch.Tensor, conv: nn.Conv2d, size=None) -> bool:
    """Whether ``conv`` after a nearest ×2 of ``x`` (to ``size``, when given) can run as
    :func:`upsample_by_phases`: an exact ×2, a plain 3×3 convolution, and no gradient wanted
    (training keeps the textbook form and its gradients)."""
    doubled = size is None or tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1])
    plain = (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
    return doubled and plain and not wants_grad


def upsample_by_phases(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` (3×3, padding 1) of ``x`` upsampled ×2 by nearest neighbours, equal to it up to
    float rounding, with 16 instead of 36 multiply-adds per input pixel and channel pair.

    Each output pixel of the upsampled map reads a 2×2 neighbourhood of ``x``, with taps that
    depend only on its phase (row and column parity): one 2×2 convolution of ``x`` with the
    four phases' kernels as output channels (:func:`moebius.nn.export_forms.upsample_phase_kernel`,
    derived once per weight) gives each phase, which is then written to its every other row and
    column."""
    phases = _phase_conv(conv)
    y = conv2d(x, phases)  # (B, 4·C, H + 1, W + 1)
    b, _, height, width = x.shape
    channels = conv.out_channels
    layout = (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    out = torch.empty(
        b, channels, 2 * height, 2 * width, dtype=y.dtype, device=y.device, memory_format=layout
    )
    for a in range(2):
        for c in range(2):
            phase = y[:, (2 * a + c) * channels : (2 * a + c + 1) * channels]
            out[:, :, a::2, c::2] = phase[:, :, a : a + height, c : c + width]
    return out


def _phase_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The 2×2 phase convolution of ``conv``, made once per weight like the engines' packed
    weights (:func:`moebius.nn.kernels.packed`: an in-place change makes a new one)."""

    def make() -> nn.Conv2d:
        with torch.no_grad():
            kernel, bias = upsample_phase_kernel(conv)
        phases = nn.Conv2d(
            conv.in_channels, 4 * conv.out_channels, 2, padding=1, bias=bias is not None,
            device="meta",
        )  # fmt: skip
        phases.weight = nn.Parameter(kernel, requires_grad=False)
        if bias is not None:
            phases.bias = nn.Parameter(bias, requires_grad=False)
        return phases

    return packed(conv.weight, ("upsample phases",), make)
