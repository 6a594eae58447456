"""Depthwise-separable convolutions and the residual block built from them."""

import torch
import torch.nn.functional as F
from torch import nn

from moebius.nn.engines import conv2d
from moebius.nn.fusion import fold_batchnorm, group_norm


class DWConv(nn.Module):
    """Depthwise k×k conv → BN → ReLU → pointwise 1×1 conv → BN (+ x when shapes allow).

    There is deliberately no activation after the second BatchNorm nor after the
    residual add: the released weights were trained that way.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        residual: bool | None = None,
    ):
        super().__init__()
        self.conv_dw = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=in_channels,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.residual = in_channels == out_channels if residual is None else residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.bn1, nn.Identity) and isinstance(self.bn2, nn.Identity):
            # Folded: ReLU and the residual add ride along with the convolutions.
            h = conv2d(x, self.conv_dw, activation="relu")
            return conv2d(h, self.conv_pw, residual=x if self.residual else None)
        h = self.bn2(conv2d(F.relu(self.bn1(self.conv_dw(x))), self.conv_pw))
        return x + h if self.residual else h

    def fuse_batchnorm(self) -> None:
        self.bn1 = fold_batchnorm(self.conv_dw, self.bn1)
        self.bn2 = fold_batchnorm(self.conv_pw, self.bn2)


class DWResBlock(nn.Module):
    """GroupNorm → SiLU → DWConv, + time embedding, GroupNorm → SiLU → DWConv, + shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        norm_groups: int = 32,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_channels, eps=eps)
        self.conv1 = DWConv(in_channels, out_channels)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(norm_groups, out_channels, eps=eps)
        self.conv2 = DWConv(out_channels, out_channels)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(group_norm(x, self.norm1, activation="silu"))
        # h + the time embedding feeds norm2 alone: the norm adds it in its own passes.
        time = self.time_emb_proj(F.silu(temb))
        h = self.conv2(group_norm(h, self.norm2, activation="silu", added=time))
        shortcut = x if self.conv_shortcut is None else conv2d(x, self.conv_shortcut)
        return shortcut + h
