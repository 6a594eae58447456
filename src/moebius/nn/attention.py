"""The PixelHacker transformer block: GLA self-attention, softmax cross-attention, GEGLU.

Key names follow the released checkpoint: diffusers' ``Attention`` / ``FeedForward`` for
``attn2`` and ``ff``, flash-linear-attention's ``GatedLinearAttention`` for ``attn1``.
Tokens are (B, T, C) in row-major raster order.
"""

import torch
import torch.nn.functional as F
from torch import nn

from moebius.nn.engines import Linear
from moebius.nn.gla import gated_linear_attention


class CrossAttention(nn.Module):
    """Multi-head softmax attention from image tokens to context tokens (scale 1/√d_head)."""

    def __init__(self, channels: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = Linear(channels, channels, bias=False)
        self.to_k = Linear(context_dim, channels, bias=False)
        self.to_v = Linear(context_dim, channels, bias=False)
        self.to_out = nn.ModuleList([Linear(channels, channels)])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """``proj`` to 2·inner features; the first half gated by GELU of the second."""

    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.proj = Linear(channels, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU(C → mult·C) → dropout → Linear(mult·C → C), as ``net.0`` / ``net.1`` / ``net.2``."""

    def __init__(self, channels: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = mult * channels
        self.net = nn.ModuleList(
            [GEGLU(channels, inner), nn.Dropout(dropout), Linear(inner, channels)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class RMSNormSwishGate(nn.Module):
    """``o / rms(o) · weight · swish(g)`` over the last (per-head) dimension, in ≥ float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        dtype = o.dtype
        work = torch.promote_types(dtype, torch.float32)
        o, g = o.to(work), g.to(work)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(work)
        return (o * F.silu(g)).to(dtype)


class GatedLinearAttention(nn.Module):
    """Causal GLA over the token sequence (flash-linear-attention's layer, ``chunk`` mode).

    Per head h: forget gate ``α = logsigmoid(W_b W_a x + b) / gate_logit_normalizer`` per key
    channel, the GLA scan of ``q, k, v`` with scale ``1/√d_k``, a per-head RMSNorm sharing one
    scale vector across heads, a swish output gate ``g_proj(x)``, then ``o_proj``.
    """

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        key_dim, value_dim = int(channels * expand_k), int(channels * expand_v)
        if key_dim % heads or value_dim % heads:
            raise ValueError(f"GLA widths {key_dim}/{value_dim} do not split into {heads} heads")
        self.heads = heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.q_proj = Linear(channels, key_dim, bias=False)
        self.k_proj = Linear(channels, key_dim, bias=False)
        self.v_proj = Linear(channels, value_dim, bias=False)
        self.g_proj = Linear(channels, value_dim, bias=False)
        self.gk_proj = nn.Sequential(
            Linear(channels, gate_low_rank_dim, bias=False),
            Linear(gate_low_rank_dim, key_dim),
        )
        self.o_proj = Linear(value_dim, channels, bias=False)
        self.g_norm_swish_gate = RMSNormSwishGate(value_dim // heads, norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def split(t: torch.Tensor) -> torch.Tensor:  # (B, T, H·d) → (B, H, T, d), head-major
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        gate = split(F.logsigmoid(self.gk_proj(x)) / self.gate_logit_normalizer)
        o = gated_linear_attention(q, k, v, gate, scale=q.shape[-1] ** -0.5).transpose(1, 2)
        o = self.g_norm_swish_gate(o, self.g_proj(x).unflatten(-1, (self.heads, -1)))
        return self.o_proj(o.flatten(2))


class GLATransformerBlock(nn.Module):
    """x ← x + GLA(LN(x)); x ← x + CrossAttn(LN(x), context); x ← x + GEGLU-FF(LN(x))."""

    def __init__(
        self, channels: int, context_dim: int, heads: int, ff_mult: int = 4, **gla_options
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = GatedLinearAttention(channels, heads, **gla_options)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = CrossAttention(channels, context_dim, heads)
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels, ff_mult)

    def forward(
        self, tokens: torch.Tensor, context: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        # ``size`` is unused: the causal scan runs over the row-major tokens as they are.
        tokens = tokens + self.attn1(self.norm1(tokens))
        tokens = tokens + self.attn2(self.norm2(tokens), context)
        return tokens + self.ff(self.norm3(tokens))
