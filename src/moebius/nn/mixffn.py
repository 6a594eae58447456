"""MixFFN (GLU-MBConv): a gated inverted bottleneck with a depthwise 3×3 in the middle."""

import torch
import torch.nn.functional as F
from torch import nn

from moebius.nn.engines import gated_depthwise
from moebius.nn.fusion import pointwise
from moebius.nn.lambda_layers import map_to_tokens, tokens_to_map


class _Conv(nn.Module):
    """A conv wrapped one level deep, matching the checkpoint keys ``<name>.conv.*``."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MixFFN(nn.Module):
    """x → 1×1 (C→2h) → SiLU → depthwise 3×3 → split (value, gate) → value·SiLU(gate) → 1×1 (h→C).

    ``forward_tokens`` is the same maths on (B, n, C) tokens: the 1×1 convs become matrix
    products, and the depthwise conv with its gating runs on the tokens' channels-last view, as
    one native pass where that is faster (:func:`moebius.nn.engines.gated_depthwise`), so no
    layout copies happen between the three convs. ``export``: the value and gate halves
    computed apart (no split of a large tensor in the exported graph; see
    :mod:`moebius.nn.export_forms`).
    """

    def __init__(self, channels: int, ratio: float = 2.5):
        super().__init__()
        hidden = int(ratio * channels)
        self.inverted_conv = _Conv(channels, 2 * hidden, 1)
        self.depth_conv = _Conv(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.point_conv = _Conv(hidden, channels, 1, bias=False)
        self.plain = False
        self.export = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.plain or self.training):
            size = (x.shape[2], x.shape[3])
            return tokens_to_map(self.forward_tokens(map_to_tokens(x), size), size)
        h = self.depth_conv(F.silu(self.inverted_conv(x)))
        value, gate = h.chunk(2, dim=1)
        return self.point_conv(value * F.silu(gate))

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.export:
            value, gate = (self._half(x, size, part) for part in (0, 1))
            return F.linear(value * F.silu(gate), self.point_conv.conv.weight[:, :, 0, 0])
        h = pointwise(x, self.inverted_conv.conv, activation="silu")  # (B, n, 2h)
        return pointwise(gated_depthwise(h, self.depth_conv.conv, size), self.point_conv.conv)

    def _half(self, x: torch.Tensor, size: tuple[int, int], part: int) -> torch.Tensor:
        """The value (``part`` 0) or gate (1) half of SiLU → depthwise 3×3, from its share of
        the weights: both convs act per channel, so this equals that half of the output."""
        inverted, depth = self.inverted_conv.conv, self.depth_conv.conv
        hidden = self.point_conv.conv.in_channels
        rows = slice(part * hidden, (part + 1) * hidden)
        h = F.silu(F.linear(x, inverted.weight[rows, :, 0, 0], inverted.bias[rows]))
        h = tokens_to_map(h, size)
        h = F.conv2d(h, depth.weight[rows], depth.bias[rows], padding=1, groups=hidden)
        return map_to_tokens(h)
