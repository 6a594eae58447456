"""Which engine (:mod:`moebius.nn.kernels`) runs each matrix product and convolution: the
fastest on this machine, found by timing them.

The first time a product or convolution of a new shape runs on the CPU, every engine computes
it on random data of that shape, in turn, a few times; the fastest that also gives the right
answer is used from then on and remembered in the user cache, one file per CPU model, thread
count and PyTorch version (``$XDG_CACHE_HOME/moebius/engines-….json``, or the folder named by
``MOEBIUS_ENGINE_CACHE``). Products are grouped by their column sizes and their row count
rounded up to a power of two, so a model at a new image size mostly reuses what it has; they
are timed on their own row count up to 16384, convolutions on one image cropped to a few GFLOP,
and engines far behind after one round are not timed again, so tuning a whole model costs
seconds to a minute, once per machine; ``moebius bench --tune`` redoes it. A missing,
unreadable, corrupt or older-format cache file is simply tuned again.

``MOEBIUS_ENGINES`` overrides the choice: ``tune`` (the default), ``aten`` (PyTorch's own
kernels everywhere) or one engine's name (used wherever it applies). Products too small to
matter, reduced-precision products under autocast (whose casting the usual ops do), anything
that needs gradients, code being traced by ``torch.compile`` and devices other than the CPU
take PyTorch's own kernels.
"""

import contextlib
import dataclasses
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from moebius.cpu import cpu_facts, cpu_model, cpu_signature, native_bfloat16
from moebius.files import write_json
from moebius.nn.kernels import (
    ACTIVATIONS,
    CONV_ENGINES,
    GATED_DEPTHWISE_ENGINES,
    GLA_CHUNK_SIZES,
    GLA_ENGINES,
    GROUP_NORM_ENGINES,
    LINEAR_ENGINES,
    SMALL_PRODUCT_ENGINES,
    WINDOW_ENGINES,
    Convolution,
    GatedDepthwise,
    GroupNormCall,
    LinearAttention,
    Product,
    SmallProducts,
    WindowContraction,
)
from moebius.nn.native import native_status

MODE_ENV = "MOEBIUS_ENGINES"
CACHE_ENV = "MOEBIUS_ENGINE_CACHE"
# /1 timed products on at most 2048 rows; /2 knew no banded window contraction; /3 no native
# one; /4 no native gated depthwise or group norm; /5 window contractions over padded rows
SCHEMA = "moebius-engines/6"
DEFAULT = "aten"
# Below this many FLOPs a kernel's choice is lost in call overheads and timing noise.
TUNE_MIN_FLOPS = 1 << 24
# The same for the memory-bound calls (group norms, gated depthwise), in elements read.
TUNE_MIN_ELEMENTS = 1 << 18
# Products are timed on their own row count up to this many rows. Each kernel's speed per row
# still changes past 2048 rows, once operands leave the caches: on a 2-core AVX2-only AMD EPYC,
# choices timed on at most 2048 rows made the student's batch-2 step at 512 px (8192 rows a
# product) 2-8 % slower than choices timed on the real rows, in each of three tuning runs.
TUNE_MAX_ROWS = 16384
TUNE_ROUNDS = 3
TUNE_MAX_CONV_FLOPS = 1 << 33
# After two timed rounds, engines this many times slower than the fastest are not timed again
# (after one, a single slow first call, 2.2× its usual time, once dropped the fastest engine).
TUNE_DROP = 2.0
TUNE_ROUNDS_BEFORE_DROP = 2
# Largest deviation from PyTorch's own kernel an engine may show on the tuning data, relative
# to the result's largest magnitude: far above rounding, far below a wrong result.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}
# The product that decides whether bfloat16 pays (rows, inputs, outputs): a MixFFN projection
# of the student's middle level at 512 px, and how much faster it must be to trade precision.
SPEEDUP_PRODUCT = (2048, 640, 1600)
BFLOAT16_MIN_SPEEDUP = 1.25

# Every engine name, of every kind of call: what a cache entry or MOEBIUS_ENGINES may name.
ENGINE_NAMES = (
    *LINEAR_ENGINES,
    *CONV_ENGINES,
    *WINDOW_ENGINES,
    *GATED_DEPTHWISE_ENGINES,
    *GROUP_NORM_ENGINES,
    *GLA_ENGINES,
    *SMALL_PRODUCT_ENGINES,
)

_override = threading.local()


def mode() -> str:
    """``tune``, ``aten`` or an engine name: :func:`use` inside its block, else the environment."""
    forced = getattr(_override, "mode", None)
    return forced or os.environ.get(MODE_ENV, "tune").strip() or "tune"


@contextlib.contextmanager
def use(name: str) -> Iterator[None]:
    """Run the block (in this thread) with engine ``name`` wherever it applies (``aten``: PyTorch's
    own kernels; ``tune``: the tuned choice)."""
    if name not in ("tune", *ENGINE_NAMES):
        raise ValueError(f"unknown engine {name!r}")
    previous = getattr(_override, "mode", None)
    _override.mode = name
    try:
        yield
    finally:
        _override.mode = previous


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moebius"


def cache_path(threads: int | None = None) -> Path:
    """This machine's cache file for ``threads`` (default: the current thread count), named by
    the CPU's model and :func:`~moebius.cpu.cpu_signature` and by the torch version."""
    threads = threads or torch.get_num_threads()
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu_model()).strip("-") or "cpu"
    version = re.sub(r"[^A-Za-z0-9.]+", "-", torch.__version__)
    return cache_dir() / f"engines-{cpu}-{cpu_signature()}-{threads}t-torch{version}.json"


class EngineTable:
    """The engine chosen for each shape key, read from and written to one cache file."""

    def __init__(self, path: Path):
        self.path = path
        self.choices: dict[str, dict] = {}
        self.tuning_seconds = 0.0
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        try:
            document = json.loads(self.path.read_text())
            choices = document["choices"] if document.get("schema") == SCHEMA else {}
            self.choices = {
                key: entry
                for key, entry in choices.items()
                if isinstance(key, str)
                and isinstance(entry, dict)
                and entry.get("engine") in ENGINE_NAMES
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            self.choices = {}  # absent or corrupt: tuned again, the file rewritten

    def engine(self, key: str, engines: dict) -> str | None:
        entry = self.choices.get(key)
        return entry["engine"] if entry and entry["engine"] in engines else None

    def record(self, key: str, engine: str, milliseconds: dict[str, float], seconds: float):
        with self._lock:
            self.choices[key] = {"engine": engine, "ms": milliseconds}
            self.tuning_seconds += seconds
            document = {
                "schema": SCHEMA,
                **cpu_facts(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "choices": dict(sorted(self.choices.items())),
            }
            with contextlib.suppress(OSError):  # a read-only cache only costs a retune
                write_json(self.path, document)


_tables: dict[tuple, EngineTable] = {}


def _table_key() -> tuple:
    # What decides the cache file, cheap to read on every product.
    return torch.get_num_threads(), os.environ.get(CACHE_ENV), os.environ.get("XDG_CACHE_HOME")


def table() -> EngineTable:
    """The table for the current thread count (each count is tuned on its own)."""
    key = _table_key()
    if key not in _tables:
        _tables[key] = EngineTable(cache_path())
    return _tables[key]


def retune() -> None:
    """Forget this machine's choices for the current thread count, on disk too."""
    cache_path().unlink(missing_ok=True)
    _tables.pop(_table_key(), None)


def report() -> dict:
    """What bench.json records: the cache file and every choice in it."""
    current = table()
    return {
        "mode": mode(),
        "cache": str(current.path),
        "tuning_seconds": round(current.tuning_seconds, 3),
        "native_kernels": native_status(),
        "choices": {key: entry["engine"] for key, entry in sorted(current.choices.items())},
    }


# ---------------------------------------------------------------------- choosing
def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in TOLERANCE
        and weight.dtype == x.dtype
        and not (torch.is_autocast_enabled("cpu") and x.dtype == torch.float32)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()  # a graph for another runtime knows only the usual ops
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def _time(runs: dict[str, Callable[[], torch.Tensor]]) -> dict[str, float]:
    """Best of a few interleaved calls of each (already warm) run, in milliseconds; runs far
    behind after the first rounds are left at that time."""
    best = dict.fromkeys(runs, float("inf"))
    for round_ in range(TUNE_ROUNDS):
        if round_ == TUNE_ROUNDS_BEFORE_DROP:
            fastest = min(best.values())
            runs = {name: run for name, run in runs.items() if best[name] <= TUNE_DROP * fastest}
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], 1000 * (time.perf_counter() - start))
    return best


def _tune(key: str, dtype: torch.dtype, calls: dict[str, Callable[[], torch.Tensor]]) -> str:
    """Time every engine whose result matches the first one's (PyTorch's own kernel where there
    is one); record and return the fastest."""
    started = time.perf_counter()
    with torch.inference_mode():
        reference = next(iter(calls.values()))().float()
        scale = reference.abs().max().item() or 1.0
        working = {}
        for name, call in calls.items():
            try:
                error = (call().float() - reference).abs().max().item()
            except (RuntimeError, TypeError, NotImplementedError):
                continue  # not in this build, or not for this dtype or shape
            if error <= TOLERANCE[dtype] * scale:
                working[name] = call
        milliseconds = _time(working)
    best = min(milliseconds, key=milliseconds.get)
    rounded = {name: round(ms, 4) for name, ms in milliseconds.items()}
    table().record(key, best, rounded, time.perf_counter() - started)
    return best


def _choose(key: str, dtype: torch.dtype, engines: dict, calls: Callable[[], dict]) -> str:
    """The engine for ``key``: forced by :func:`mode`, cached, or tuned now. The first of
    ``engines`` is the default, used where a forced name does not apply."""
    choice = mode()
    if choice != "tune":
        return choice if choice in engines else next(iter(engines))
    return table().engine(key, engines) or _tune(key, dtype, calls())


def _run(engines: dict, name: str, call):
    """Engine ``name`` on ``call``; the default engine if that one refuses this call's memory
    layout (the tuning data was contiguous)."""
    default = next(iter(engines))
    if name == default:
        return engines[default](call)
    try:
        return engines[name](call)
    except (RuntimeError, TypeError, NotImplementedError):
        return engines[default](call)


# ---------------------------------------------------------------------- matrix products
def _random_like(shape, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape) * scale).to(dtype)


def _linear_calls(p: Product, rows: int) -> dict[str, Callable[[], torch.Tensor]]:
    n, k = p.matrix.shape
    dtype = p.x.dtype
    x = _random_like((rows, k), dtype)
    weight = _random_like((n, k), dtype, k**-0.5)
    bias = None if p.bias is None else _random_like((n,), dtype)
    residual = None if p.residual is None else _random_like((rows, n), dtype)
    sample = Product(x, weight, bias, p.activation, residual)
    return {name: (lambda run=run: run(sample)) for name, run in LINEAR_ENGINES.items()}


def _linear_key(dtype, rows: int, k: int, n: int, bias: bool, activation, residual: bool) -> str:
    return (
        f"linear {str(dtype).removeprefix('torch.')} {rows}x{k}x{n}"
        f"{' bias' if bias else ''}{' ' + activation if activation else ''}"
        f"{' residual' if residual else ''}"
    )


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
    source: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(x @ Wᵀ + bias) + residual`` over the last dimension of ``x``, on the engine
    chosen for this machine. ``weight``: (N, K), or a 1×1 convolution's (N, K, 1, 1);
    ``activation``: None, ``"silu"`` or ``"relu"``; ``source``: the parameter ``weight`` was
    derived from, when it is not one itself (the key for its packed copy)."""
    product = Product(x, weight, bias, activation, residual, source)
    if not _eligible(x, weight):
        return LINEAR_ENGINES[DEFAULT](product)
    n, k = product.matrix.shape
    rows = product.rows
    if 2 * rows * n * k < TUNE_MIN_FLOPS and mode() == "tune":
        return LINEAR_ENGINES[DEFAULT](product)
    bucket = 1 << max(rows - 1, 0).bit_length()
    key = _linear_key(x.dtype, bucket, k, n, bias is not None, activation, residual is not None)
    name = _choose(
        key, x.dtype, LINEAR_ENGINES, lambda: _linear_calls(product, min(bucket, TUNE_MAX_ROWS))
    )
    return _run(LINEAR_ENGINES, name, product)


class Linear(nn.Linear):
    """``nn.Linear`` on the engine chosen for this machine (see :func:`linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def bfloat16_speedup() -> float | None:
    """How many times faster a typical product of the student runs in bfloat16 than in float32
    here, each on its fastest engine: timed once per machine and thread count, then read from
    the cache. None when timing is off (``MOEBIUS_ENGINES`` other than ``tune``)."""
    if mode() != "tune":
        return None
    rows, k, n = SPEEDUP_PRODUCT
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        with torch.inference_mode():
            linear(torch.zeros(rows, k, dtype=dtype), torch.zeros(n, k, dtype=dtype))
        entry = table().choices.get(_linear_key(dtype, rows, k, n, False, None, False), {})
        if not entry.get("ms"):
            return None
        best[dtype] = min(entry["ms"].values())
    return best[torch.float32] / best[torch.bfloat16]


def prefers_bfloat16() -> bool:
    """Whether ``--dtype auto`` should run in bfloat16 on this CPU: it computes bfloat16 natively
    (AVX-512 BF16, AMX or Arm BF16) and a typical product measured clearly faster in it."""
    if not native_bfloat16():
        return False
    speedup = bfloat16_speedup()
    return speedup is not None and speedup >= BFLOAT16_MIN_SPEEDUP


# ---------------------------------------------------------------------- convolutions
def _conv_calls(c: Convolution) -> dict[str, Callable[[], torch.Tensor]]:
    dtype = c.x.dtype
    fan_in = c.weight[0].numel()
    # One image, halved while a call would cost more than TUNE_MAX_CONV_FLOPS: big enough for
    # each kernel's steady speed, small enough that tuning a model takes seconds.
    _, channels, height, width = c.x.shape
    per_pixel = 2 * c.weight.shape[0] * fan_in // (c.stride[0] * c.stride[1])
    while per_pixel * height * width > TUNE_MAX_CONV_FLOPS and min(height, width) >= 16:
        height, width = height // 2, width // 2
    shape = (1, channels, height, width)
    x = _random_like(shape, dtype).contiguous(memory_format=torch.channels_last)
    weight = _random_like(c.weight.shape, dtype, fan_in**-0.5)
    bias = None if c.bias is None else _random_like(c.bias.shape, dtype)
    sample = Convolution(x, weight, bias, c.stride, c.padding, c.dilation, c.groups, c.activation)
    return {name: (lambda run=run: run(sample)) for name, run in CONV_ENGINES.items()}


def conv2d(
    x: torch.Tensor,
    conv: nn.Conv2d,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(conv(x)) + residual`` for a channels-last map ``x``, on the engine chosen
    for this machine; a 1×1 convolution is the matrix product over the map's pixels
    (:func:`linear`). Channels-first maps take the module itself."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        y = conv(x)
        y = y if activation is None else ACTIVATIONS[activation](y)
        return y if residual is None else y + residual
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0):
        out = linear(
            x.permute(0, 2, 3, 1),
            conv.weight,
            conv.bias,
            activation=activation,
            residual=None if residual is None else residual.permute(0, 2, 3, 1),
        )
        return out.permute(0, 3, 1, 2)
    if residual is not None:
        return conv2d(x, conv, activation) + residual
    call = Convolution(
        x,
        conv.weight,
        conv.bias,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        activation,
    )
    if not _eligible(x, conv.weight) or isinstance(conv.padding, str):
        return CONV_ENGINES[DEFAULT](call)
    b, c, h, w = x.shape
    o, _, kh, kw = conv.weight.shape
    flops = 2 * b * o * h * w * conv.weight[0].numel() // (conv.stride[0] * conv.stride[1])
    if flops < TUNE_MIN_FLOPS and mode() == "tune":
        return CONV_ENGINES[DEFAULT](call)
    key = (
        f"conv {str(x.dtype).removeprefix('torch.')} {b}x{c}x{h}x{w} {o}x{kh}x{kw} "
        f"s{conv.stride[0]}p{conv.padding[0]}d{conv.dilation[0]}g{conv.groups}"
        f"{' bias' if conv.bias is not None else ''}{' ' + activation if activation else ''}"
    )
    name = _choose(key, x.dtype, CONV_ENGINES, lambda: _conv_calls(call))
    return _run(CONV_ENGINES, name, call)


# ---------------------------------------------------------------------- window contractions
def window_contraction(c: WindowContraction) -> torch.Tensor:
    """Local-λ's positional contraction (see :class:`moebius.nn.kernels.WindowContraction`)
    on the formulation fastest here for its shape and dtype; returns ``c.y``."""
    c = dataclasses.replace(c, linear=linear)
    b, n, heads, k = c.q.shape
    v = c.values.shape[-1]
    if not _eligible(c.q, c.bank):
        return WINDOW_ENGINES["strided-windows"](c)
    dtype = c.q.dtype
    key = f"window {str(dtype).removeprefix('torch.')} {b}x{n}x{heads}x{k} v{v} r{c.r} w{c.wide}"

    def calls() -> dict[str, Callable[[], torch.Tensor]]:
        # One image: both formulations go image by image, so it shows which is faster.
        sample = dataclasses.replace(
            c,
            q=_random_like((1, *c.q.shape[1:]), dtype),
            bank=_random_like(c.bank.shape, dtype, k**-0.5),
            values=_random_like((1, *c.values.shape[1:]), dtype),
            source=None,
        )
        zeros = (1, *c.y.shape[1:])
        return {
            name: (lambda run=run: run(dataclasses.replace(sample, y=c.y.new_zeros(zeros))))
            for name, run in WINDOW_ENGINES.items()
        }

    name = _choose(key, dtype, WINDOW_ENGINES, calls)
    return _run(WINDOW_ENGINES, name, c)


# ---------------------------------------------------------------------- skinny products
def small_products(
    a: torch.Tensor, b: torch.Tensor, start: torch.Tensor | None = None
) -> torch.Tensor:
    """``torch.bmm(a, b)``, or ``start + a·b`` (``torch.baddbmm``) when ``start`` is given, on the
    formulation fastest here for the shape and dtype (see
    :class:`moebius.nn.kernels.SmallProducts`). ``start`` is consumed: it may hold the result."""
    batch, rows, k = a.shape
    n = b.shape[-1]
    call = SmallProducts(a, b, start)
    if not _eligible(a, b) or (2 * batch * rows * k * n < TUNE_MIN_FLOPS and mode() == "tune"):
        return SMALL_PRODUCT_ENGINES["aten"](call)
    dtype = a.dtype
    key = (
        f"products {str(dtype).removeprefix('torch.')} {batch}x{rows}x{k}x{n}"
        f"{' start' if start is not None else ''}"
    )

    def calls() -> dict[str, Callable[[], torch.Tensor]]:
        sample_a = _random_like(a.shape, dtype)
        sample_b = _random_like(b.shape, dtype, k**-0.5)
        sample_start = None if start is None else _random_like(start.shape, dtype)

        # Every call from the same start: a copy, as an engine may write into it (the copy adds
        # the same time to each engine).
        def fresh() -> torch.Tensor | None:
            return None if sample_start is None else sample_start.clone()

        return {
            name: (lambda run=run: run(SmallProducts(sample_a, sample_b, fresh())))
            for name, run in SMALL_PRODUCT_ENGINES.items()
        }

    name = _choose(key, dtype, SMALL_PRODUCT_ENGINES, calls)
    return _run(SMALL_PRODUCT_ENGINES, name, call)


# ---------------------------------------------------------------------- MixFFN's gated depthwise
def gated_depthwise(h: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """``value · silu(gate)`` of the depthwise 3×3 ``conv`` of (b, height·width, 2C) tokens
    ``h`` (see :class:`moebius.nn.kernels.GatedDepthwise`), on the formulation fastest here
    for its shape and dtype; returns (b, height·width, C) tokens."""
    call = GatedDepthwise(h, conv, size, depthwise=lambda grid: conv2d(grid, conv))
    default = next(iter(GATED_DEPTHWISE_ENGINES))
    small = h.numel() < TUNE_MIN_ELEMENTS and mode() == "tune"
    if small or not _eligible(h, conv.weight) or not h.is_contiguous():
        return GATED_DEPTHWISE_ENGINES[default](call)
    b, n, channels = h.shape
    key = f"gated-depthwise {str(h.dtype).removeprefix('torch.')} {b}x{n}x{channels} {size[1]}"

    def calls() -> dict[str, Callable[[], torch.Tensor]]:
        sample = dataclasses.replace(call, h=_random_like(h.shape, h.dtype))
        return {
            name: (lambda run=run: run(sample)) for name, run in GATED_DEPTHWISE_ENGINES.items()
        }

    name = _choose(key, h.dtype, GATED_DEPTHWISE_ENGINES, calls)
    return _run(GATED_DEPTHWISE_ENGINES, name, call)


# ---------------------------------------------------------------------- group norms
def group_norm(
    x: torch.Tensor,
    norm: nn.GroupNorm,
    activation: str | None = None,
    added: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(norm(x + added))`` for a channels-last map ``x`` and ``added`` (b, c),
    (1, c) for every image alike, or None (see :class:`moebius.nn.kernels.GroupNormCall`), on
    the formulation fastest here."""
    if added is not None:
        added = added.expand(x.shape[0], x.shape[1])
    call = GroupNormCall(x, norm, activation, added)
    default = next(iter(GROUP_NORM_ENGINES))
    small = x.numel() < TUNE_MIN_ELEMENTS and mode() == "tune"
    if small or norm.weight is None or not _eligible(x, norm.weight):
        return GROUP_NORM_ENGINES[default](call)
    b, c, h, w = x.shape
    key = (
        f"group-norm {str(x.dtype).removeprefix('torch.')} {b}x{c}x{h}x{w} g{norm.num_groups}"
        f"{' ' + activation if activation else ''}{' added' if added is not None else ''}"
    )

    def calls() -> dict[str, Callable[[], torch.Tensor]]:
        # Offset from zero, as activations are, so that a formulation that drops digits there
        # gives a wrong answer and is not chosen.
        sample = dataclasses.replace(
            call,
            x=(_random_like(x.shape, torch.float32) + 3.0)
            .to(x.dtype)
            .contiguous(memory_format=torch.channels_last),
        )
        return {name: (lambda run=run: run(sample)) for name, run in GROUP_NORM_ENGINES.items()}

    name = _choose(key, x.dtype, GROUP_NORM_ENGINES, calls)
    return _run(GROUP_NORM_ENGINES, name, call)


# ---------------------------------------------------------------------- gated linear attention
def gated_linear_attention(a: LinearAttention) -> torch.Tensor:
    """Causal GLA (see :class:`moebius.nn.kernels.LinearAttention`) in the chunk size fastest
    here for its shape and dtype; gradients, traced graphs and small calls take the default."""
    b, h, t, dk = a.q.shape
    dv = a.v.shape[-1]
    default = next(iter(GLA_ENGINES))
    flops = 2 * b * h * t * (GLA_CHUNK_SIZES[0] * (dk + dv) + 2 * dk * dv)
    if not _eligible(a.q, a.k) or (flops < TUNE_MIN_FLOPS and mode() == "tune"):
        return GLA_ENGINES[default](a)
    dtype = a.q.dtype
    key = f"gla {str(dtype).removeprefix('torch.')} {b}x{h}x{t} k{dk} v{dv}"

    def calls() -> dict[str, Callable[[], torch.Tensor]]:
        # Gates as the layer makes them (log-sigmoid over its normaliser of 16): a chunk decays
        # as much as the model's do, so none is split further than it would be.
        sample = LinearAttention(
            _random_like(a.q.shape, dtype),
            _random_like(a.k.shape, dtype),
            _random_like(a.v.shape, dtype),
            (torch.nn.functional.logsigmoid(torch.randn(a.g.shape)) / 16).to(dtype),
            a.scale,
        )
        return {name: (lambda run=run: run(sample)) for name, run in GLA_ENGINES.items()}

    name = _choose(key, dtype, GLA_ENGINES, calls)
    return _run(GLA_ENGINES, name, a)
