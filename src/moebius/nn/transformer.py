"""The 2D wrapper around token blocks: GroupNorm → 1×1 in → blocks on tokens → 1×1 out → + x."""

import torch
from torch import nn

from moebius.nn.engines import conv2d
from moebius.nn.fusion import group_norm
from moebius.nn.lambda_block import map_to_tokens, tokens_to_map


class Transformer2D(nn.Module):
    """Runs ``blocks`` (each called as ``block(tokens, context, (H, W))``) on a feature map."""

    def __init__(self, channels: int, blocks: list[nn.Module], norm_groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(blocks)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        tokens = map_to_tokens(conv2d(group_norm(x, self.norm), self.proj_in))
        for block in self.transformer_blocks:
            tokens = block(tokens, context, size)
        return conv2d(tokens_to_map(tokens, size), self.proj_out, residual=x)
