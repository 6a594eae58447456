"""Lambda layers (Bello, "LambdaNetworks", ICLR 2021) as used by Moebius.

A lambda layer summarises a context into small linear functions ("lambdas")
and applies them to every query:

    y_n = q_n · (λ_content + λ_position(n))

with λ_content = softmax_over_context(K) · Vᵀ, a k×v matrix shared by all positions.
Queries have ``heads`` heads of depth k; keys and values are shared by all heads
(multi-query, intra-depth u = 1). Cost is linear in the number of positions.

Layouts: maps are (B, C, H, W); positions are flattened row-major (n = y·W + x);
query channel h·k + i is head h, key index i; outputs are concatenated as (head, v).

Each layer has two exact implementations (see :mod:`moebius.nn.fusion`):
``forward`` on maps following the formulas literally (the plain path), and
``forward_tokens`` on (B, H·W, C) tokens, the default at inference. The fast one
keeps positions outermost so every per-position contraction is a batched matrix
product over contiguous or simply strided memory, and contracts the queries with
the positional weights first: with the r×r kernel bank for the local layer, with
the position table for the interactive one (n·h·k·m + n·h·m·v instead of
n·m·k·v + n·h·k·v multiply-adds). With ``export`` set (:func:`moebius.nn.fusion.set_export`),
``forward_tokens`` takes the export forms of :mod:`moebius.nn.export_forms` for the two
pieces that do not trace (Local-λ's neighbourhoods, Interactive-λ's table resampling).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from moebius.errors import ConfigError
from moebius.nn.engines import small_products, window_contraction
from moebius.nn.export_forms import local_positional, position_table
from moebius.nn.fusion import fold_batchnorm, norm_tokens, pointwise
from moebius.nn.kernels import WindowContraction


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H·W, C) row-major tokens (a view for channels-last maps)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H·W, C) row-major tokens → (B, C, H, W) (a channels-last view for contiguous tokens)."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *size)


def _head_depth(channels: int, heads: int) -> int:
    """k = v = channels / heads: the heads' outputs are concatenated back to ``channels``."""
    if heads < 1 or channels < 1 or channels % heads:
        raise ConfigError(
            f"a lambda layer needs channels divisible by its heads, got {channels} channels "
            f"and {heads} heads"
        )
    return channels // heads


def _heads(q: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads·k, H, W) → (B, heads, k, H·W)."""
    b, c, h, w = q.shape
    return q.reshape(b, heads, c // heads, h * w)


def _merge_heads(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, v, H·W) → (B, heads·v, H, W)."""
    b, heads, v, _ = y.shape
    return y.reshape(b, heads * v, height, width)


class LocalLambda(nn.Module):
    """Self-lambda over the image with local positional lambdas from a r×r kernel bank.

    λ_position(n) for every position comes from convolving each value channel
    map with k learned r×r kernels, E_i ∗ V_j (stored as a Conv3d with kernel
    (1, r, r) so the checkpoint keys match the authors').
    """

    def __init__(self, channels: int, heads: int = 8, receptive_field: int = 15):
        super().__init__()
        # An even kernel has no centre: padding r // 2 would shift the map by half a pixel
        # and grow it by one.
        if receptive_field < 1 or receptive_field % 2 == 0:
            raise ConfigError(
                f"the Local-λ receptive field must be a positive odd number, got {receptive_field}"
            )
        self.heads = heads
        self.dim_k = self.dim_v = _head_depth(channels, heads)
        self.to_q = nn.Conv2d(channels, self.dim_k * heads, 1, bias=False)
        self.to_k = nn.Conv2d(channels, self.dim_k, 1, bias=False)
        self.to_v = nn.Conv2d(channels, self.dim_v, 1, bias=False)
        self.norm_q = nn.BatchNorm2d(self.dim_k * heads)
        self.norm_v = nn.BatchNorm2d(self.dim_v)
        r = receptive_field
        self.pos_conv = nn.Conv3d(1, self.dim_k, (1, r, r), padding=(0, r // 2, r // 2))
        self.plain = False
        self.export = False

    def positional_lambdas(self, v: torch.Tensor) -> torch.Tensor:
        """(B, v, H, W) values → (B, v, k, H·W): E_i ∗ V_j for every key index i."""
        b, dim_v, h, w = v.shape
        kernel = self.pos_conv.weight.squeeze(2)  # (k, 1, r, r)
        padding = self.pos_conv.padding[1:]
        lam = F.conv2d(v.reshape(b * dim_v, 1, h, w), kernel, self.pos_conv.bias, padding=padding)
        return lam.reshape(b, dim_v, self.dim_k, h * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if not (self.plain or self.training):
            return tokens_to_map(self.forward_tokens(map_to_tokens(x), (h, w)), (h, w))
        q = _heads(self.norm_q(self.to_q(x)), self.heads)  # (B, heads, k, n)
        k = self.to_k(x).reshape(b, self.dim_k, h * w).softmax(dim=-1)  # (B, k, n)
        v = self.norm_v(self.to_v(x))  # (B, v, H, W)

        content_lambda = torch.einsum("bkn,bvn->bkv", k, v.reshape(b, self.dim_v, h * w))
        position_lambdas = self.positional_lambdas(v)  # (B, v, k, n)

        y_content = torch.einsum("bhkn,bkv->bhvn", q, content_lambda)
        y_position = torch.einsum("bhkn,bvkn->bhvn", q, position_lambdas)
        return _merge_heads(y_content + y_position, h, w)

    def forward_tokens(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The same layer on (B, n, C) tokens, with the queries contracted with the kernel bank
        first: Σ_i Q_i (E_i ∗ V) = Σ_Δ (Σ_i Q_i E_i(Δ)) V(n + Δ), about r²·h·(k + v) instead of
        r²·k·v + h·k·v multiply-adds per position (2.5× fewer at the released widths)."""
        b, n, _ = x.shape
        height, width = size
        r, pad = self.pos_conv.kernel_size[-1], self.pos_conv.padding[-1]
        q = norm_tokens(pointwise(x, self.to_q), self.norm_q)  # (B, n, heads·k)
        k = pointwise(x, self.to_k).softmax(dim=1)  # (B, n, k), softmax over positions
        v = norm_tokens(pointwise(x, self.to_v), self.norm_v)  # (B, n, v)

        # λc and the kernel bank's bias act the same at every position: one k×v matrix.
        shared = torch.bmm(k.transpose(1, 2), v) + self.pos_conv.bias[None, :, None]
        q = q.reshape(b, n, self.heads, self.dim_k)
        y = small_products(q.reshape(b, -1, self.dim_k), shared.to(q.dtype))
        if self.export:
            kernel = self.pos_conv.weight.reshape(self.dim_k, r, r)
            return y.reshape(b, n, -1) + local_positional(q, v, kernel, self.heads, size)
        # The values on a grid 2·pad columns wider than the image (and pad rows taller), so
        # that the r×r neighbourhood row dy of position (y, x) is the contiguous (r, v) block
        # at row (y + dy)·(W + 2·pad) + x: no gather (formulations timed per machine:
        # moebius.nn.kernels.WindowContraction). One more padding row at the bottom: the spare
        # rows the last windows reach into.
        y = y.reshape(b, n, self.heads, self.dim_v)
        values = F.pad(v.reshape(b, height, width, -1), (0, 0, pad, pad, pad, pad + 1))
        values = values.reshape(b, -1, self.dim_v).to(y.dtype)
        bank = self.pos_conv.weight.reshape(self.dim_k, r * r).to(q.dtype)
        wide = width + 2 * pad
        window = WindowContraction(q, bank, values, y, wide, r, source=self.pos_conv.weight)
        return window_contraction(window).reshape(b, n, self.heads * self.dim_v)

    def fuse_batchnorm(self) -> None:
        self.norm_q = fold_batchnorm(self.to_q, self.norm_q)
        self.norm_v = fold_batchnorm(self.to_v, self.norm_v)


def resample_position_table(table: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample a (H0·W0, m, k, u) per-position table, laid out on a square H0×W0 grid, to H×W.

    The table is treated as an image with m·k·u channels and resized with bicubic
    interpolation (``align_corners=False``, antialiased when shrinking), the usual
    way to carry learned position embeddings to another resolution. When the size
    already matches, the table itself is returned, so native-size results are
    exactly the plain computation.
    """
    rows, *rest = table.shape
    side = int(round(rows**0.5))
    if side * side != rows:
        raise ValueError(f"position table with {rows} rows is not a square grid")
    if (side, side) == tuple(size):
        return table
    grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    shrinking = size[0] < side or size[1] < side
    resized = F.interpolate(
        grid.float(), size=size, mode="bicubic", align_corners=False, antialias=shrinking
    ).to(table.dtype)
    return resized.permute(0, 2, 3, 1).reshape(size[0] * size[1], *rest)


class InteractiveLambda(nn.Module):
    """Cross-lambda from the image queries to the m LCG context tokens.

    λ_position(n)[i, j] = Σ_m E[n, m, i] · V[j, m] uses a learned table E with
    one row per latent position of the training resolution; other resolutions
    use E resampled over its H×W grid (see :func:`resample_position_table`).
    """

    def __init__(
        self, channels: int, context_dim: int, context_tokens: int, positions: int, heads: int = 8
    ):
        super().__init__()
        self.heads = heads
        self.dim_k = self.dim_v = _head_depth(channels, heads)
        self.rel_pos_emb = nn.Parameter(torch.randn(positions, context_tokens, self.dim_k, 1))
        self.to_q = nn.Conv2d(channels, self.dim_k * heads, 1, bias=False)
        self.to_k = nn.Linear(context_dim, self.dim_k, bias=False)
        self.to_v = nn.Linear(context_dim, self.dim_v, bias=False)
        self.norm_q = nn.BatchNorm2d(self.dim_k * heads)
        self.norm_v = nn.BatchNorm1d(self.dim_v)
        self.side = math.isqrt(positions)  # the table's grid side, when it is square
        self.plain = False
        self.export = False

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        if not (self.plain or self.training):
            tokens = self.forward_tokens(map_to_tokens(x), context, (h, w))
            return tokens_to_map(tokens, (h, w))
        q = _heads(self.norm_q(self.to_q(x)), self.heads)  # (B, heads, k, n)
        k = self.to_k(context).transpose(1, 2).softmax(dim=-1)  # (B, k, m)
        v = self.norm_v(self.to_v(context).transpose(1, 2))  # (B, v, m)

        content_lambda = torch.einsum("bkm,bvm->bkv", k, v)
        table = resample_position_table(self.rel_pos_emb, (h, w)).squeeze(-1)  # (n, m, k)
        position_lambdas = torch.einsum("nmk,bvm->bnkv", table, v)

        y_content = torch.einsum("bhkn,bkv->bhvn", q, content_lambda)
        y_position = torch.einsum("bhkn,bnkv->bhvn", q, position_lambdas)
        return _merge_heads(y_content + y_position, h, w)

    def forward_tokens(
        self, x: torch.Tensor, context: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """The same layer on (B, n, C) tokens, queries contracted with the position table first:
        y_n = Σ_m (Σ_i Q_n,i E[n, m, i]) V_m + Q_n · λc."""
        b, n, _ = x.shape
        q = norm_tokens(pointwise(x, self.to_q), self.norm_q)  # (B, n, heads·k)
        k = self.to_k(context).softmax(dim=1)  # (B, m, k), softmax over the m tokens
        v = norm_tokens(self.to_v(context), self.norm_v)  # (B, m, v)

        content_lambda = torch.bmm(k.transpose(1, 2), v)  # (B, k, v)
        heads_q = q.reshape(b, n, self.heads, self.dim_k)
        if self.export:
            table = position_table(self.rel_pos_emb, self.side, size)  # (n, m, k)
            # One product for any batch: a graph traced from a per-image loop fixes the batch.
            weights = torch.matmul(heads_q, table.transpose(1, 2))  # (B, n, heads, m)
        else:
            table = resample_position_table(self.rel_pos_emb, size).squeeze(-1).to(q.dtype)
            # Per image, so that the table is not expanded over the batch (a copy).
            weights = torch.stack([small_products(one, table.transpose(1, 2)) for one in heads_q])
        y = small_products(q.reshape(b, n * self.heads, self.dim_k), content_lambda.to(q.dtype))
        y = small_products(weights.reshape(b, n * self.heads, -1), v.to(q.dtype), start=y)
        return y.reshape(b, n, self.heads * self.dim_v)  # (B, n·heads, v) as tokens

    def fuse_batchnorm(self) -> None:
        self.norm_q = fold_batchnorm(self.to_q, self.norm_q)
        self.norm_v = fold_batchnorm(self.to_v, self.norm_v)
