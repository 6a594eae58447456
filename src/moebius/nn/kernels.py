"""The interchangeable implementations ("engines") of a matrix product and of a convolution.

Each engine computes exactly the same maths as ``F.linear`` / ``F.conv2d`` (equal to the
dtype's rounding) through a different library or memory layout; which one is fastest depends
on the CPU, the dtype, the thread count and the shape, so :mod:`moebius.nn.engines` times them
on the machine and picks. Matrix products (``x @ Wᵀ + b`` over the last dimension of ``x``):

* ``aten``: PyTorch's own ``F.linear`` (on CPU: MKL's GEMM in float32, oneDNN's in bfloat16).
* ``onednn-conv``: oneDNN's 1×1 convolution over the rows, seen as a channels-last
  (1, K, M, 1) map without a copy.
* ``onednn-packed``: oneDNN's matrix product on a weight re-laid-out once into the blocked
  format the kernel reads ("pre-packed"), so no call pays for the reordering.
* ``mkl-packed`` (float32): MKL's GEMM on a weight packed once with MKL's own packing.

Convolutions of channels-last maps (k×k, depthwise or dense): ``aten`` (``F.conv2d``), ``onednn``
(oneDNN's convolution called directly, no layout decision), ``onednn-packed`` (on a weight
re-laid-out once) and ``aten-nchw`` (``F.conv2d`` on a channels-first copy, converted back).

Local-λ's window contraction: three formulations in PyTorch's products (strided, unfolded,
banded) and ``native-windows``, Moebius's own C++ kernel, compiled for the CPU on first use
(:mod:`moebius.nn.native`); where it cannot be built it is never chosen. MixFFN's gated
depthwise convolution: ``separate-gating`` (the convolution, then SiLU and product in PyTorch)
or ``native-gating`` (one C++ pass). GroupNorm (and a SiLU after it) on channels-last maps:
``centred-group-norm`` (PyTorch's kernel on a centred map) or ``native-group-norm`` (C++, two
passes). Batches of skinny products (thousands of rows against a few dozen to a few hundred
inputs and outputs: the lambda layers' content products): ``aten`` (``torch.bmm``) or
``native-products`` (C++ register tiles).

The packed engines call PyTorch's ``torch.ops.mkldnn`` / ``torch.ops.mkl`` operators (the ones
``torch.compile`` emits on CPU); builds without them simply never pick those engines. A
product may carry an epilogue, ``activation(x @ Wᵀ + b) + residual``, which engines that can
fuse it do in the same pass.
"""

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from moebius.nn.gla import gla_chunked
from moebius.nn.native import native

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "relu": F.relu,
}
_ONEDNN_ACTIVATION = {None: "none", "silu": "swish", "relu": "relu"}


# ---------------------------------------------------------------------- weights packed once
_PACKED: dict[tuple, tuple[weakref.ref, tuple, torch.Tensor]] = {}
_WATCHED: set[int] = set()


def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor: it has no version counter
        return 0


def _forget(ident: int) -> None:
    _WATCHED.discard(ident)
    for key in [k for k in _PACKED if k[0] == ident]:
        del _PACKED[key]


def _state(tensor: torch.Tensor) -> tuple:
    """What changes when a weight's values may have: an in-place write bumps the version; a
    module's ``.to()`` swaps the parameter's data (new storage, maybe a new dtype), keeping the
    same Parameter object and version."""
    return _version(tensor), tensor.data_ptr(), tensor.dtype, tensor.device


def packed(source: torch.Tensor, kind: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``'s packed copy of the weight ``source``, made once and reused for as long as
    ``source`` lives unmodified (an in-place change, e.g. loading weights, or a conversion to
    another dtype makes a new one)."""
    ident = id(source)
    key = (ident, *kind)
    entry = _PACKED.get(key)
    if entry is not None and entry[0]() is source and entry[1] == _state(source):
        return entry[2]
    if ident not in _WATCHED:
        weakref.finalize(source, _forget, ident)
        _WATCHED.add(ident)
    result = make()
    _PACKED[key] = (weakref.ref(source), _state(source), result)
    return result


# ---------------------------------------------------------------------- matrix products
@dataclass(frozen=True)
class Product:
    """One call of a matrix product: ``activation(x @ weight2dᵀ + bias) + residual``.

    ``weight`` is (N, K) or a 1×1 convolution's (N, K, 1, 1); ``source`` is the parameter the
    weight derives from (itself unless the caller reshaped it), the key for packed copies."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    activation: str | None = None
    residual: torch.Tensor | None = None
    source: torch.Tensor | None = None

    @property
    def matrix(self) -> torch.Tensor:
        return self.weight.reshape(self.weight.shape[0], -1)

    @property
    def rows(self) -> int:
        return self.x.numel() // self.x.shape[-1]

    def finish(self, y: torch.Tensor, activated: bool = False, added: bool = False):
        """Apply what the kernel did not fuse."""
        if self.activation is not None and not activated:
            y = ACTIVATIONS[self.activation](y)
        if self.residual is not None and not added:
            y = y + self.residual
        return y


def _aten_linear(p: Product) -> torch.Tensor:
    return p.finish(F.linear(p.x, p.matrix, p.bias))


def _conv_route_linear(p: Product) -> torch.Tensor:
    *lead, channels = p.x.shape
    as_map = p.x.reshape(1, -1, 1, channels).permute(0, 3, 1, 2)
    out = torch.ops.aten.mkldnn_convolution(
        as_map, p.matrix[:, :, None, None], p.bias, (0, 0), (1, 1), (1, 1), 1
    )
    return p.finish(out.permute(0, 2, 3, 1).reshape(*lead, -1))


def _packing_source(p: Product) -> tuple[torch.Tensor, tuple]:
    """The tensor a packed copy of ``p.weight`` is remembered under, and where in it the weight
    sits: its source parameter when the weight is a view of it (one parameter can give several
    weights, e.g. slices), else the weight itself."""
    source = p.weight
    if p.source is not None and (
        p.weight.untyped_storage().data_ptr() == p.source.untyped_storage().data_ptr()
    ):
        source = p.source
    return source, (p.weight.storage_offset(), tuple(p.weight.stride()), tuple(p.weight.shape))


def _onednn_packed_linear(p: Product) -> torch.Tensor:
    source, where = _packing_source(p)
    # Laid out for any number of rows: one packed copy per weight, whatever the image size.
    weight = packed(
        source,
        ("onednn-linear", p.x.dtype, where),
        lambda: torch.ops.mkldnn._reorder_linear_weight(p.matrix.contiguous()),
    )
    x = p.x if p.x.stride(-1) == 1 else p.x.contiguous()
    residual = p.residual
    if (
        residual is not None
        and p.activation is None
        and residual.shape == (*x.shape[:-1], weight.shape[0])
        and residual.dtype == x.dtype
        and residual.is_contiguous()
    ):
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, p.bias, "add")
    out = torch.ops.mkldnn._linear_pointwise(
        x, weight, p.bias, _ONEDNN_ACTIVATION[p.activation], [], ""
    )
    return p.finish(out, activated=True)


def _mkl_packed_linear(p: Product) -> torch.Tensor:
    if p.x.dtype != torch.float32:
        raise TypeError("MKL's packed GEMM is float32 only")
    source, where = _packing_source(p)
    rows = p.rows
    matrix = p.matrix.contiguous()
    # MKL packs for a row count: one copy per weight and row count the model meets.
    weight = packed(
        source,
        ("mkl-linear", rows, where),
        lambda: torch.ops.mkl._mkl_reorder_linear_weight(matrix, rows),
    )
    *lead, channels = p.x.shape
    out = torch.ops.mkl._mkl_linear(p.x.reshape(-1, channels), weight, matrix, p.bias, rows)
    return p.finish(out.reshape(*lead, -1))


LINEAR_ENGINES: dict[str, Callable[[Product], torch.Tensor]] = {
    "aten": _aten_linear,
    "onednn-conv": _conv_route_linear,
    "onednn-packed": _onednn_packed_linear,
    "mkl-packed": _mkl_packed_linear,
}


# ---------------------------------------------------------------------- convolutions
@dataclass(frozen=True)
class Convolution:
    """One call of ``activation(conv(x))`` on a channels-last map."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    activation: str | None = None

    def finish(self, y: torch.Tensor, activated: bool = False) -> torch.Tensor:
        if self.activation is not None and not activated:
            y = ACTIVATIONS[self.activation](y)
        return y

    def aten(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


def _aten_conv(c: Convolution) -> torch.Tensor:
    return c.finish(c.aten(c.x))


def _aten_nchw_conv(c: Convolution) -> torch.Tensor:
    out = c.aten(c.x.contiguous())
    return c.finish(out.contiguous(memory_format=torch.channels_last))


def _onednn_conv(c: Convolution) -> torch.Tensor:
    out = torch.ops.aten.mkldnn_convolution(
        c.x, c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups
    )
    return c.finish(out)


def _onednn_packed_conv(c: Convolution) -> torch.Tensor:
    # Laid out for any input size: one packed copy per weight.
    weight = packed(
        c.weight,
        ("onednn-conv", c.x.dtype),
        lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
            c.weight.to_mkldnn(), list(c.padding), list(c.stride), list(c.dilation), c.groups
        ),
    )
    out = torch.ops.mkldnn._convolution_pointwise(
        c.x,
        weight,
        c.bias,
        list(c.padding),
        list(c.stride),
        list(c.dilation),
        c.groups,
        _ONEDNN_ACTIVATION[c.activation],
        [],
        "",
    )
    return c.finish(out, activated=True)


CONV_ENGINES: dict[str, Callable[[Convolution], torch.Tensor]] = {
    "aten": _aten_conv,
    "aten-nchw": _aten_nchw_conv,
    "onednn": _onednn_conv,
    "onednn-packed": _onednn_packed_conv,
}


# ---------------------------------------------------------------------- window contractions
@dataclass(frozen=True)
class WindowContraction:
    """``y[i, n] += Σ_{dy,dx} (q[i, n] · bank[:, dy·r + dx]) · values[i, m(n) + dy·wide + dx]``.

    Positions n run over the image row-major, ``width = wide − r + 1`` columns; the values lie on
    the image padded to ``wide`` columns (and by r // 2 rows above), so that the window of
    position n = y·width + x starts at value row m(n) = y·wide + x. The heads' queries
    q[i, n] (heads, k) against the kernel bank (k, r·r) give r×r taps per head, which weight the
    r×r neighbourhood of value rows. ``values`` (b, rows, v) holds the padded value grid
    flattened, with at least r spare rows at the end; ``y`` (b, n, heads, v) is accumulated in
    place. ``source``: the parameter the bank is a view of (for packing)."""

    q: torch.Tensor
    bank: torch.Tensor
    values: torch.Tensor
    y: torch.Tensor
    wide: int
    r: int
    source: torch.Tensor | None = None
    linear: Callable | None = None  # the product to use: moebius.nn.engines.linear


def _on_padded_grid(
    run: Callable[[WindowContraction], torch.Tensor],
) -> Callable[[WindowContraction], torch.Tensor]:
    """A formulation written for positions on the padded grid (each kernel row's value rows at
    one stride from every position), run on image positions: q and y widened by the padding
    columns (zeros) and the image's columns of y copied back."""

    def on_image(c: WindowContraction) -> torch.Tensor:
        b, n, heads, k = c.q.shape
        width = c.wide - c.r + 1
        spare = c.wide - width

        def widened(x: torch.Tensor) -> torch.Tensor:
            rows = F.pad(x.reshape(b, n // width, width, -1), (0, 0, 0, spare))
            return rows.reshape(b, -1, heads, x.shape[-1])

        y = run(replace(c, q=widened(c.q), y=widened(c.y)))
        return c.y.copy_(y.reshape(b, n // width, c.wide, -1)[:, :, :width].reshape(c.y.shape))

    on_image.__doc__ = run.__doc__
    return on_image


def _strided_windows(c: WindowContraction) -> torch.Tensor:
    """All r·r taps in one product; per image and kernel row dy, one batched product of the taps
    with the r value rows at n + dy·wide, read as overlapping strided windows without a copy."""
    b, n, _, _ = c.q.shape
    v = c.values.shape[-1]
    taps = c.linear(c.q, c.bank.t(), source=c.source)  # (b, n, heads, r·r)
    for i in range(b):
        base = c.values[i]
        for dy in range(c.r):
            window = base.as_strided(
                (n, c.r, v), (v, v, 1), base.storage_offset() + dy * c.wide * v
            )
            c.y[i].baddbmm_(taps[i, :, :, dy * c.r : (dy + 1) * c.r], window)
    return c.y


def _unfolded_windows(c: WindowContraction) -> torch.Tensor:
    """Each image's value rows unfolded once into contiguous (r, v) windows; per kernel row dy,
    the r taps of that row (one product) and one batched product over contiguous operands. For
    kernels that copy strided or overlapping operands (bfloat16's), this avoids r copies."""
    b, n, _, _ = c.q.shape
    v = c.values.shape[-1]
    rows = n + (c.r - 1) * c.wide
    rows_of_bank = c.bank.t()  # (r·r, k): one row per tap
    for i in range(b):
        base = c.values[i]
        windows = base.as_strided((rows, c.r, v), (v, v, 1), base.storage_offset()).contiguous()
        for dy in range(c.r):
            taps = c.linear(c.q[i], rows_of_bank[dy * c.r : (dy + 1) * c.r], source=c.source)
            c.y[i].baddbmm_(taps, windows[dy * c.wide : dy * c.wide + n])
    return c.y


# Positions per band: the band's product is (8·heads) × (8 + r − 1) against (8 + r − 1) × v,
# 1.5× the taps' multiply-adds at r = 15 (the zeros off the band), in 8× fewer, larger products.
BAND_POSITIONS = 8


def _banded_windows(c: WindowContraction) -> torch.Tensor:
    """Blocks of ``BAND_POSITIONS`` consecutive positions per product: a block's r value rows at
    kernel row dy all lie in its P + r − 1 consecutive value rows, so each position's r taps are
    written on a band (position p's at columns p … p + r − 1, zeros elsewhere) and one batched
    product over the blocks replaces P tiny per-position ones. Positions past the last whole
    block go one by one, as in ``strided-windows``."""
    b, n, heads, _ = c.q.shape
    v = c.values.shape[-1]
    r, size = c.r, BAND_POSITIONS
    width = size + r - 1
    blocks, tail = divmod(n, size)
    whole = blocks * size
    taps = c.linear(c.q, c.bank.t(), source=c.source)  # (b, n, heads, r·r)
    band = taps.new_zeros(blocks, size, heads, width)
    # band[block, p, head, p + dx] for dx < r: only the band is ever written, the rest stays 0.
    on_band = band.as_strided(
        (blocks, size, heads, r), (size * heads * width, heads * width + 1, width, 1)
    )
    for i in range(b):
        base = c.values[i]
        y = c.y[i, :whole].view(blocks, size * heads, v)
        for dy in range(r):
            row = slice(dy * r, (dy + 1) * r)
            start = base.storage_offset() + dy * c.wide * v
            on_band.copy_(taps[i, :whole, :, row].view(blocks, size, heads, r))
            rows = base.as_strided((blocks, width, v), (size * v, v, 1), start)
            y.baddbmm_(band.view(blocks, size * heads, width), rows)
            if tail:
                window = base.as_strided((tail, r, v), (v, v, 1), start + whole * v)
                c.y[i, whole:].baddbmm_(taps[i, whole:, :, row], window)
    return c.y


def _native_windows(c: WindowContraction) -> torch.Tensor:
    """Moebius's C++ kernel (:mod:`moebius.nn.native`): per block of image positions, the taps
    from one product, then each position's window sum with its heads' outputs held in
    registers, without the thousands of small products. Raises where the kernel could not be
    built."""
    native().window_contraction(c.q, c.bank, c.values, c.y, c.wide, c.r)
    return c.y


WINDOW_ENGINES: dict[str, Callable[[WindowContraction], torch.Tensor]] = {
    "strided-windows": _on_padded_grid(_strided_windows),
    "unfolded-windows": _on_padded_grid(_unfolded_windows),
    "banded-windows": _on_padded_grid(_banded_windows),
    "native-windows": _native_windows,
}


# ---------------------------------------------------------------------- MixFFN's gated depthwise
@dataclass(frozen=True)
class GatedDepthwise:
    """MixFFN's middle: ``d = depthwise3×3(h) + bias``, then ``value · silu(gate)`` of d's two
    channel halves. ``h``: (b, height·width, 2C) tokens; returns (b, height·width, C).
    ``depthwise``: the convolution to use for the PyTorch formulation (the engine-chosen
    :func:`moebius.nn.engines.conv2d`)."""

    h: torch.Tensor
    conv: torch.nn.Conv2d
    size: tuple[int, int]
    depthwise: Callable | None = None


def _separate_gating(g: GatedDepthwise) -> torch.Tensor:
    """The convolution over all 2C channels, then a SiLU and a product over its halves: three
    passes through memory, each writing a full map."""
    b, n, channels = g.h.shape
    height, width = g.size
    grid = g.h.view(b, height, width, channels).permute(0, 3, 1, 2)  # channels-last, no copy
    depthwise = g.depthwise or g.conv
    d = depthwise(grid).permute(0, 2, 3, 1).reshape(b, n, channels)
    value, gate = d.chunk(2, dim=-1)
    return value * F.silu(gate)


def _native_gating(g: GatedDepthwise) -> torch.Tensor:
    """Moebius's C++ kernel (:mod:`moebius.nn.native`): each output row from its three input
    rows while they are in cache, writing only the C gated channels. Raises where the kernel
    could not be built."""
    height, width = g.size
    weight, bias = g.conv.weight, g.conv.bias
    bias = weight.new_zeros(weight.shape[0]) if bias is None else bias
    return native().gated_depthwise(g.h, weight, bias, height, width)


GATED_DEPTHWISE_ENGINES: dict[str, Callable[[GatedDepthwise], torch.Tensor]] = {
    "separate-gating": _separate_gating,
    "native-gating": _native_gating,
}


# ---------------------------------------------------------------------- skinny products
@dataclass(frozen=True)
class SmallProducts:
    """``start[i] + a[i] · b[i]`` for a (batch, rows, k) and b (batch, k, n); the products alone
    without ``start`` (batch, rows, n). An engine may write the result into ``start``."""

    a: torch.Tensor
    b: torch.Tensor
    start: torch.Tensor | None = None


def _aten_products(p: SmallProducts) -> torch.Tensor:
    return torch.bmm(p.a, p.b) if p.start is None else torch.baddbmm(p.start, p.a, p.b)


def _native_products(p: SmallProducts) -> torch.Tensor:
    """Moebius's C++ kernel (:mod:`moebius.nn.native`): each band of 64 rows on register tiles
    of 8 rows × 48 columns, with every value of ``a`` broadcast once per tile; the sums are added
    to ``start`` in place. Raises where the kernel could not be built."""
    batch, rows, _ = p.a.shape
    out = p.a.new_empty(batch, rows, p.b.shape[-1]) if p.start is None else p.start
    native().small_products(p.a.contiguous(), p.b, out, p.start is not None)
    return out


SMALL_PRODUCT_ENGINES: dict[str, Callable[[SmallProducts], torch.Tensor]] = {
    "aten": _aten_products,
    "native-products": _native_products,
}


# ---------------------------------------------------------------------- group norms
@dataclass(frozen=True)
class GroupNormCall:
    """``activation(group_norm(x + added))`` for a channels-last map ``x`` (b, c, h, w) and
    ``added``, one value per image and channel (b, c) or None."""

    x: torch.Tensor
    norm: torch.nn.GroupNorm
    activation: str | None = None
    added: torch.Tensor | None = None


def _centred_group_norm(g: GroupNormCall) -> torch.Tensor:
    """PyTorch's channels-last GroupNorm on the map centred on each group's mean first.

    That kernel is the fast one of PyTorch's (several times faster than the channels-first
    kernel on a converted copy), but it takes the variance as E[x²] − E[x]², which loses most
    float32 digits when a group's mean is large against its spread (an offset of 100 costs
    ~1e-2 absolute, and bfloat16 loses everything). Subtracting a constant from a group does
    not change its normalisation, so each group's mean (a column sum over the pixels,
    accumulated in float32) is subtracted first, in the map's dtype (the constant need not be
    exact, only near the mean): the kernel then sees means near 0, where it is exact to
    rounding. ``added`` comes after the subtraction, less what the rounded mean left over: the
    sum is then near ``added`` and keeps its digits. The activation runs in place."""
    x, norm = g.x, g.norm
    b, c, h, w = x.shape
    groups = norm.num_groups
    added = None if g.added is None else g.added.reshape(b, c).float()
    sums = x.permute(0, 2, 3, 1).reshape(b, h * w, c).sum(dim=1, dtype=torch.float32)
    if added is not None:
        sums = sums + h * w * added
    means = sums.view(b, groups, c // groups).mean(-1, keepdim=True) / (h * w)
    centres = means.to(x.dtype)
    x = x - centres.expand(b, groups, c // groups).reshape(b, c, 1, 1)
    if added is not None:
        left = (means - centres.float()).expand(b, groups, c // groups).reshape(b, c)
        x = x + (added - left).reshape(b, c, 1, 1).to(x.dtype)
    y = F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
    return y if g.activation is None else ACTIVATIONS[g.activation](y, inplace=True)


def _native_group_norm(g: GroupNormCall) -> torch.Tensor:
    """Moebius's C++ kernel (:mod:`moebius.nn.native`): the statistics in one pass, shifted by
    each channel's first value so that they stay exact, then the normalisation with the SiLU in
    the same pass; ``added`` only moves each channel's offset. Raises where the kernel could not
    be built, or for another activation."""
    if g.activation not in (None, "silu") or g.norm.weight is None:
        raise NotImplementedError("the native group norm is affine, with SiLU or nothing after")
    norm = g.norm
    return native().group_norm(
        g.x, norm.weight, norm.bias, norm.num_groups, norm.eps, g.activation == "silu", g.added
    )


GROUP_NORM_ENGINES: dict[str, Callable[[GroupNormCall], torch.Tensor]] = {
    "centred-group-norm": _centred_group_norm,
    "native-group-norm": _native_group_norm,
}


# ---------------------------------------------------------------------- gated linear attention
@dataclass(frozen=True)
class LinearAttention:
    """Causal gated linear attention, :func:`moebius.nn.gla.gla_chunked`'s arguments. Every
    chunk size computes the same recurrence; the products inside a chunk grow with its size and
    the scan across chunks with their count, so which size is fastest depends on the sequence,
    the head widths and the machine."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor
    scale: float


def _chunks_of(size: int) -> Callable[[LinearAttention], torch.Tensor]:
    return lambda a: gla_chunked(a.q, a.k, a.v, a.g, a.scale, chunk_size=size)


# The first is the default: the size every path without tuning (training, tracing) runs.
GLA_CHUNK_SIZES = (64, 32, 16, 8)
GLA_ENGINES: dict[str, Callable[[LinearAttention], torch.Tensor]] = {
    f"chunk-{size}": _chunks_of(size) for size in GLA_CHUNK_SIZES
}
