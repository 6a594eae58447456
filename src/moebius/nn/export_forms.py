"""Export forms: the maths of the fast path in operators that ONNX Runtime and OpenVINO run
well, traceable with the batch and the spatial size as graph inputs, each proven equal to the
eager path (tests/test_export.py).

The eager fast path reads Local-λ's r×r neighbourhoods through ``as_strided`` views and
resamples Interactive-λ's position table with Python arithmetic on the map size; neither
survives tracing (the first becomes an out-of-bounds ``Gather``, the second a ``round`` of a
traced size). Here:

* Local-λ's positional term, Σ_Δ (Σ_i Q_i E_i(Δ)) V(n + Δ), runs on tiles of ``TILE``
  neighbouring positions of an image row. A tile needs one (r, TILE + r − 1) block of values
  per image, and the queries' weights on that block form a banded matrix that matrix products
  of the queries with banded copies of the kernel bank (one per tile position) give directly.
  So the whole term is matrix products and two gathers of the padded values, ~41× the values'
  size at ``TILE`` 8 (a full im2col would be r² = 225×), for (TILE + r − 1)/r ≈ 1.5× the
  multiply-adds of the query-first product.
* Interactive-λ's table is resampled in the graph by two matrix products with the bicubic
  weight matrices of PyTorch's ``interpolate`` (antialiased when shrinking), computed from the
  map size with elementwise operators; at the table's own size these matrices are the identity,
  so the table comes out exactly.
* The up-sampler's nearest ×2 then 3×3 convolution is computed on the small map: each of the
  four output phases is a 2×2 convolution whose taps sum the 3×3 taps that read the same
  repeated pixel, 16 instead of 36 multiply-adds per input pixel and channel pair (these two
  convolutions are a fifth of the student's arithmetic).
* MixFFN's value and gate halves are computed apart (their weights split, not their output:
  :meth:`moebius.nn.mixffn.MixFFN.forward_tokens`), so the graph holds no split of a large
  tensor, which OpenVINO runs in reference code (~1.5 % of the step).

No ``Einsum`` (slow and never quantized in ONNX Runtime) and no data-dependent branches.
"""

import torch
import torch.nn.functional as F

# Positions per Local-λ tile along an image row; see the module docstring.
TILE = 8
# PyTorch's cubic convolution coefficients: plain bicubic, and the antialiased (PIL) filter.
CUBIC_A, CUBIC_A_ANTIALIAS = -0.75, -0.5


def banded_kernels(kernel: torch.Tensor, tile: int = TILE) -> torch.Tensor:
    """(k, r, r) kernel bank → (tile, k, r·(tile + r − 1)): row t holds the bank shifted right
    by t columns, so that queries at tile position t times it give their weights on the tile's
    (r, tile + r − 1) block of values. One product with a 0/1 shift tensor (exact)."""
    k, _, r = (int(d) for d in kernel.shape)
    span = tile + r - 1
    target = torch.arange(tile)[:, None, None] + torch.arange(r)[None, :, None]
    shift = (target == torch.arange(span)[None, None, :]).to(kernel.dtype)  # (tile, r, span)
    return torch.matmul(kernel.reshape(1, k * r, r), shift).reshape(tile, k, r * span)


def local_positional(
    q: torch.Tensor, v: torch.Tensor, kernel: torch.Tensor, heads: int, size, tile: int = TILE
) -> torch.Tensor:
    """Σ_i Q_i (E_i ∗ V) for (B, n, heads·k) queries, (B, n, v) values and the (k, r, r) kernel
    bank (zero padding), as (B, n, heads·v) tokens."""
    b, n, dim_v = v.shape
    # Python ints, not traced sizes: ONNX's integer division truncates where Python's floors.
    k, _, r = (int(d) for d in kernel.shape)
    height, width = size
    pad, span = r // 2, tile + r - 1
    tiles = (width + tile - 1) // tile
    # Pads are fixed (the most a last tile can need) and index ranges cut what this size needs,
    # so the graph holds no size-dependent pads.
    # (B, tiles, H, tile, heads, k) @ (tile, k, r·span): the banded weights of every query
    q = F.pad(q.reshape(b, height, width, heads * k), (0, 0, 0, tile - 1))[:, :, : tiles * tile]
    q = q.reshape(b, height, tiles, tile * heads * k).transpose(1, 2)
    q = q.reshape(b * tiles * height, tile, heads, k)
    # One product per tile position, each with its own 2-D weight: runtimes run these as
    # fully-connected layers (OpenVINO runs a product with a 3-D constant in float32 only).
    kernels = banded_kernels(kernel, tile).to(q.dtype)
    band = torch.stack([torch.matmul(q[:, t], kernels[t]) for t in range(tile)], dim=1)
    band = band.reshape(b * tiles * height, tile * heads, r * span)
    # Each tile's r×span block of values: columns t·tile + c of every padded row, then rows
    # y + dy, both as one Gather with an index grid.
    padded = F.pad(v.reshape(b, height, width, dim_v), (0, 0, pad, pad + tile - 1, pad, pad))
    columns = torch.arange(tiles)[:, None] * tile + torch.arange(span)[None, :]
    blocks = padded.index_select(2, columns.reshape(-1)).reshape(b, -1, tiles, span, dim_v)
    rows = torch.arange(height)[:, None] + torch.arange(r)[None, :]
    blocks = blocks.transpose(1, 2).index_select(2, rows.reshape(-1))
    y = torch.matmul(band, blocks.reshape(b * tiles * height, r * span, dim_v))
    y = y.reshape(b, tiles, height, tile, heads * dim_v).transpose(1, 2)
    y = y.reshape(b, height, tiles * tile, heads * dim_v)[:, :, :width]
    return y.reshape(b, n, heads * dim_v)


def _cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel with coefficient ``a``."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, far * (x < 2))


def resampling_matrix(length, side: int, antialias) -> torch.Tensor:
    """(length, side) weights of PyTorch's bicubic ``interpolate`` (``align_corners=False``) from
    ``side`` samples to ``length``: plain (coefficient −0.75, taps beyond the edges folded onto
    the edge samples) or, where ``antialias`` (a bool tensor) is true, the antialiased filter
    (coefficient −0.5, stretched by the shrink factor, weights normalised). ``length`` may be a
    traced size."""
    scale = side / torch.as_tensor(length, dtype=torch.float32)
    position = (torch.arange(length, dtype=torch.float32)[:, None] + 0.5) * scale - 0.5
    # samples −2 … side + 1: the plain filter's 4 taps never reach further; those beyond the
    # edges read the edge samples
    offsets = torch.arange(-2, side + 2, dtype=torch.float32)[None, :] - position
    taps = _cubic(offsets, CUBIC_A)
    if side == 1:
        plain = taps.sum(dim=1, keepdim=True)
    else:
        first, last = taps[:, :3].sum(dim=1, keepdim=True), taps[:, -3:].sum(dim=1, keepdim=True)
        plain = torch.cat([first, taps[:, 3:-3], last], dim=1)
    smooth = _cubic(offsets[:, 2:-2] / scale.clamp(min=1.0), CUBIC_A_ANTIALIAS)
    smooth = smooth / smooth.sum(dim=1, keepdim=True)
    return torch.where(antialias, smooth, plain)


def position_table(table: torch.Tensor, side: int, size) -> torch.Tensor:
    """:func:`moebius.nn.lambda_layers.resample_position_table` of a (side², m, k, 1) table to
    ``size``, as (H·W, m, k), by two matrix products, for sizes known only when the graph
    runs."""
    height, width = size
    _, tokens, depth, _ = (int(d) for d in table.shape)
    shrinking = torch.as_tensor(height < side) | torch.as_tensor(width < side)
    rows = resampling_matrix(height, side, shrinking).to(table.dtype)
    columns = resampling_matrix(width, side, shrinking).to(table.dtype)
    grid = torch.matmul(rows, table.reshape(side, side * tokens * depth))
    grid = torch.matmul(columns, grid.reshape(-1, side, tokens * depth))  # (H, W, m·k)
    return grid.reshape(-1, tokens, depth)


def upsample_phase_kernel(conv: torch.nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The four phases' 2×2 kernels of ``conv`` (3×3, padding 1) after a nearest ×2, as one
    (4·out, in, 2, 2) kernel in the order (0,0) (0,1) (1,0) (1,1), and its bias.

    Output row 2i + a reads upsampled rows 2i + a − 1 … 2i + a + 1, that is input rows
    i − 1, i, i (a = 0) or i, i, i + 1 (a = 1): a 2-tap kernel whose taps are sums of the 3×3
    kernel's rows, and the same along columns. This kernel over the input padded by one gives
    phase (a, b) at offset (a, b) of its output. The taps are summed in float32."""
    weight = conv.weight.float()
    first, middle, last = weight[:, :, 0], weight[:, :, 1], weight[:, :, 2]
    rows = [torch.stack([first, middle + last], 2), torch.stack([first + middle, last], 2)]
    phases = []
    for taps in rows:  # (out, in, 2 rows, 3 columns) for a = 0, 1
        left, centre, right = taps[..., 0], taps[..., 1], taps[..., 2]
        phases += [torch.stack([left, centre + right], 3), torch.stack([left + centre, right], 3)]
    kernel = torch.cat(phases).to(conv.weight.dtype)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    return kernel, bias


def upsample_conv(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``conv`` (3×3, padding 1) of ``x`` upsampled ×2 by nearest neighbours, on ``x`` itself
    (:func:`upsample_phase_kernel`), the phases interleaved by a pixel shuffle."""
    kernel, bias = upsample_phase_kernel(conv)
    out_channels = conv.out_channels
    y = F.conv2d(x, kernel.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=1)
    b, _, height, width = x.shape
    y = y.reshape(b, 4, out_channels, height + 1, width + 1)
    # Phase (a, c) read at its offset, the four stacked behind each channel: the layout of a
    # pixel shuffle (ONNX DepthToSpace), which interleaves them in one pass; stacking along the
    # last axis instead makes OpenVINO run reference-code concatenations (~2 % of the step).
    phases = [y[:, 2 * a + c, :, a : a + height, c : c + width] for a in range(2) for c in range(2)]
    y = torch.stack(phases, dim=2).reshape(b, 4 * out_channels, height, width)
    return F.pixel_shuffle(y, 2)
