"""Sinusoidal timestep features and the MLP that embeds them."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_sinusoids(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """[cos(t·f_i), sin(t·f_i)] with f_i = max_period^(-i/(dim/2)), in float32.

    Cosines come first (diffusers' ``flip_sin_to_cos=True``, ``freq_shift=0``).
    """
    half = dim // 2
    exponent = (
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    angles = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Linear → SiLU → Linear on the sinusoidal features (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_channels: int, embed_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.linear_1 = nn.Linear(in_channels, embed_channels)
        self.linear_2 = nn.Linear(embed_channels, embed_channels)
        self.export = False
        self.register_buffer("feature_table", None, persistent=False)

    def tabulate(self, num_timesteps: int) -> None:
        """Keep the features of timesteps 0 … ``num_timesteps`` − 1 as a table, which the export
        form looks up instead of computing ``t·f_i`` in the graph: OpenVINO in bfloat16 would
        round those angles to 8 significant bits (t = 999 becomes 1000, an angle of 55 is off
        by up to 0.125), which moved the whole noise prediction by a third of its size.
        Not saved with the weights."""
        timesteps = torch.arange(num_timesteps, device=self.linear_1.weight.device)
        self.register_buffer(
            "feature_table", timestep_sinusoids(timesteps, self.in_channels), persistent=False
        )

    def forward(self, timesteps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.export and self.feature_table is not None:
            features = self.feature_table[timesteps].to(dtype)
        else:
            features = timestep_sinusoids(timesteps, self.in_channels).to(dtype)
        return self.linear_2(F.silu(self.linear_1(features)))
