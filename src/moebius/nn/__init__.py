"""Pure building blocks: each module is one concept with its maths in plain sight."""

from moebius.nn.dwconv import DWConv, DWResBlock
from moebius.nn.embeddings import TimestepEmbedding, timestep_sinusoids
from moebius.nn.lambda_layers import InteractiveLambda, LocalLambda, resample_position_table
from moebius.nn.mixffn import MixFFN
from moebius.nn.sampling import Downsample, Upsample
from moebius.nn.transformer import Transformer2D

__all__ = [
    "DWConv",
    "DWResBlock",
    "Downsample",
    "InteractiveLambda",
    "LocalLambda",
    "MixFFN",
    "TimestepEmbedding",
    "Transformer2D",
    "Upsample",
    "resample_position_table",
    "timestep_sinusoids",
]
