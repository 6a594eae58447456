"""The LλMI transformer block: Local-λ self, Interactive-λ cross, MixFFN, each pre-norm residual."""

import torch
from torch import nn

from moebius.nn.lambda_layers import InteractiveLambda, LocalLambda, map_to_tokens, tokens_to_map
from moebius.nn.mixffn import MixFFN

__all__ = ["LambdaBlock", "map_to_tokens", "tokens_to_map"]


class LambdaBlock(nn.Module):
    def __init__(
        self,
        channels: int,
        context_dim: int,
        context_tokens: int,
        positions: int,
        heads: int = 8,
        mlp_ratio: float = 2.5,
        receptive_field: int = 15,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = LocalLambda(channels, heads, receptive_field)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = InteractiveLambda(channels, context_dim, context_tokens, positions, heads)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = MixFFN(channels, mlp_ratio)
        self.plain = False

    def forward(
        self, tokens: torch.Tensor, context: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        if not (self.plain or self.training):
            # Every sub-layer works on tokens directly: no map round trips.
            tokens = tokens + self.attn1.forward_tokens(self.norm1(tokens), size)
            tokens = tokens + self.attn2.forward_tokens(self.norm2(tokens), context, size)
            return tokens + self.ff.forward_tokens(self.norm3(tokens), size)
        tokens = tokens + map_to_tokens(self.attn1(tokens_to_map(self.norm1(tokens), size)))
        tokens = tokens + map_to_tokens(
            self.attn2(tokens_to_map(self.norm2(tokens), size), context)
        )
        return tokens + map_to_tokens(self.ff(tokens_to_map(self.norm3(tokens), size)))
