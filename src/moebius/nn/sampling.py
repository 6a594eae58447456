"""Resolution changes between UNet levels."""

import torch
import torch.nn.functional as F
from torch import nn

from moebius.nn.engines import conv2d
from moebius.nn.export_forms import upsample_conv


class Downsample(nn.Module):
    """3×3 conv with stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.conv)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 conv; ``size`` overrides ×2 to match a skip tensor.

    ``export``: the conv computed on the small map (:func:`moebius.nn.export_forms.upsample_conv`),
    for graphs whose sides halve exactly at every level (the pipelines' pixel multiple), where
    ``size`` is always ×2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.export = False

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.export:
            return upsample_conv(x, self.conv)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return conv2d(x, self.conv)
