"""moebius.nn.native: the C++ kernels build where a compiler exists; the window kernel computes
Local-λ's window sum in every code path (the AVX-512 float32 and AVX-512 BF16 register kernels
for 8 heads, whole and partial 16-lane vectors, odd and even windows; plain loops otherwise),
the gated depthwise kernel MixFFN's middle at every map edge, the group norm the module's
result with exact statistics, the small products batches of skinny matrix products (partial
tiles, odd inputs), in the AVX-512 code and in the portable loops of a build without it; none
is chosen where it cannot be built."""

import copy
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moebius.nn import native as native_module
from moebius.nn.kernels import WINDOW_ENGINES, WindowContraction

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler here"
)


def _window_sum(q, bank, values, y, wide, r):
    """The contraction term by term, in float64 from the same inputs: image position (row, x)
    has its window's corner at value row row·wide + x."""
    b, n, heads, _ = q.shape
    width = wide - r + 1
    corners = torch.tensor([row * wide + x for row in range(n // width) for x in range(width)])
    out = y.double().clone()
    taps = q.double() @ bank.double()  # (b, n, heads, r·r)
    for dy in range(r):
        for dx in range(r):
            rows = values.double()[:, corners + dy * wide + dx]  # (b, n, v)
            out += taps[..., dy * r + dx, None] * rows[:, :, None, :]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("heads", "v", "r"),
    [
        (8, 40, 15),  # the student's top level: 2 whole vectors and 8 lanes
        (8, 16, 5),  # one whole vector
        (8, 56, 4),  # a block of 48 columns and one of 8; an even window
        (8, 80, 7),  # 48 + 32
        (8, 6, 3),  # one partial vector; k = 6: the taps' pairs of inputs
        (8, 5, 3),  # an odd k: bfloat16's taps from the library's product
        (3, 5, 3),  # not 8 heads: the plain loops
    ],
)
def test_the_native_kernel_computes_the_window_sum(dtype, heads, v, r):
    b, height, width = 2, 5, 31  # 155 positions per image: a 128-position block and a tail
    wide = width + r - 1
    n = height * width
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(b, n, heads, v, generator=generator).to(dtype)
    bank = (torch.randn(v, r * r, generator=generator) / v**0.5).to(dtype)
    values = torch.randn(b, (height + r) * wide, v, generator=generator).to(dtype)
    y = torch.randn(b, n, heads, v, generator=generator).to(dtype)
    expected = _window_sum(q, bank, values, y, wide, r)
    native_module.native().window_contraction(q, bank, values, y, wide, r)
    error = (y.double() - expected).abs().max() / expected.abs().max()
    assert error <= (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_native_kernel_reads_a_kernel_bank_of_any_layout(dtype):
    """The bank as the transposed view of a (r·r, k) parameter: the kernel lays it out itself."""
    b, height, width, heads, v, r = 2, 3, 9, 8, 16, 5
    wide = width + r - 1
    generator = torch.Generator().manual_seed(14)
    q = torch.randn(b, height * width, heads, v, generator=generator).to(dtype)
    bank = (torch.randn(r * r, v, generator=generator) / v**0.5).to(dtype).t()
    values = torch.randn(b, (height + r) * wide, v, generator=generator).to(dtype)
    y = torch.zeros(b, height * width, heads, v, dtype=dtype)
    expected = _window_sum(q, bank, values, y, wide, r)
    native_module.native().window_contraction(q, bank, values, y, wide, r)
    assert not bank.is_contiguous()
    assert _relative_error(y, expected) <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_the_native_kernel_refuses_windows_past_the_values():
    q, bank = torch.zeros(1, 16, 8, 4), torch.zeros(4, 9)  # 2 rows of 8 on a 10-wide grid
    values, y = torch.zeros(1, 30, 4), torch.zeros(1, 16, 8, 4)
    with pytest.raises(RuntimeError, match="reach past the value rows"):
        native_module.native().window_contraction(q, bank, values, y, 10, 3)
    with pytest.raises(RuntimeError, match="whole rows"):
        native_module.native().window_contraction(q[:, :12], bank, values, y[:, :12], 10, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize(
    ("batch", "rows", "k", "n"),
    [
        (2, 300, 40, 40),  # four 64-row bands and one of 44 rows (a partial tile of 4)
        (3, 37, 5, 7),  # an odd k: bfloat16's last input alone; one partial vector
        (2, 77, 160, 160),  # three 48-column tiles and one of 16
        (50, 8, 40, 10),  # many products of one tile each
    ],
)
def test_the_native_kernel_computes_small_products(dtype, accumulate, batch, rows, k, n):
    generator = torch.Generator().manual_seed(13)
    a = torch.randn(batch, rows, k, generator=generator).to(dtype)
    b = torch.randn(batch, k, n, generator=generator).to(dtype)
    out = torch.randn(batch, rows, n, generator=generator).to(dtype)
    expected = (out.double() if accumulate else 0) + a.double() @ b.double()
    native_module.native().small_products(a, b, out, accumulate)
    assert _relative_error(out, expected) <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_the_small_products_kernel_refuses_mismatched_operands():
    a, b, out = torch.zeros(2, 10, 4), torch.zeros(2, 4, 6), torch.zeros(2, 10, 6)
    with pytest.raises(RuntimeError, match="disagree in shape"):
        native_module.native().small_products(a, b[:, :3], out, False)
    with pytest.raises(RuntimeError, match="share one dtype"):
        native_module.native().small_products(a, b.double(), out, False)
    with pytest.raises(RuntimeError, match="contiguous"):
        columns = torch.zeros(2, 4, 10).transpose(1, 2)  # a's shape, not its layout
        native_module.native().small_products(columns, b, out, False)


def _gated_depthwise(h, weight, bias, height, width):
    """value · silu(gate) of the depthwise 3×3 conv's halves, in float64 from the same inputs."""
    b, n, channels = h.shape
    grid = h.double().transpose(1, 2).reshape(b, channels, height, width)
    d = torch.nn.functional.conv2d(grid, weight.double(), bias.double(), padding=1, groups=channels)
    value, gate = d.flatten(2).transpose(1, 2).chunk(2, dim=-1)
    return value * torch.nn.functional.silu(gate)


def _group_norm(x, norm, silu, added=None):
    """The module on x + added (then SiLU) in float64 from the same inputs."""
    if added is not None:
        x = x.double() + added.double()[:, :, None, None]
    expected = copy.deepcopy(norm).double()(x.double())
    return torch.nn.functional.silu(expected) if silu else expected


def _relative_error(got, expected) -> float:
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("height", "width", "half"),
    [
        (9, 20, 40),  # two whole vectors and 8 lanes; rows longer than the prefetch distance
        (4, 3, 16),  # one whole vector
        (1, 1, 5),  # one pixel: every neighbour is padding
        (1, 6, 3),  # one row
        (7, 1, 70),  # one column; past one 64-channel block
    ],
)
def test_the_native_kernel_computes_the_gated_depthwise(dtype, height, width, half):
    generator = torch.Generator().manual_seed(12)
    h = torch.randn(2, height * width, 2 * half, generator=generator).to(dtype)
    weight = torch.randn(2 * half, 1, 3, 3, generator=generator).to(dtype)
    bias = torch.randn(2 * half, generator=generator).to(dtype)
    expected = _gated_depthwise(h, weight, bias, height, width)
    got = native_module.native().gated_depthwise(h, weight, bias, height, width)
    assert got.shape == expected.shape and got.dtype == dtype
    assert _relative_error(got, expected) <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_the_gated_depthwise_kernel_refuses_mismatched_shapes():
    h = torch.zeros(1, 12, 8)
    weight, bias = torch.zeros(8, 1, 3, 3), torch.zeros(8)
    with pytest.raises(RuntimeError, match="height\\*width positions"):
        native_module.native().gated_depthwise(h, weight, bias, 5, 3)
    with pytest.raises(RuntimeError, match="depthwise 3x3 weight"):
        native_module.native().gated_depthwise(h, torch.zeros(8, 1, 5, 5), bias, 4, 3)
    with pytest.raises(RuntimeError, match="bias of 2C"):
        native_module.native().gated_depthwise(h, weight, torch.zeros(4), 4, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("with_added", [False, True], ids=["x", "x+added"])
def test_the_native_group_norm_matches_the_module(dtype, silu, with_added):
    """Groups of 20 channels (a whole vector and 4 lanes), more pixels than one statistics chunk
    (so several threads' partial sums meet), a mean of 50 against a spread of 2; a value per
    image and channel added first moves some channels' means by up to ±20."""
    generator = torch.Generator().manual_seed(13)
    norm = torch.nn.GroupNorm(3, 60, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(60, generator=generator))
        norm.bias.copy_(torch.randn(60, generator=generator))
    x = 2 * torch.randn(2, 60, 23, 29, generator=generator) + 50
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    added = 7 * torch.randn(2, 60, generator=generator) if with_added else None
    expected = _group_norm(x, norm, silu, added)
    got = native_module.native().group_norm(x, norm.weight, norm.bias, 3, norm.eps, silu, added)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(got, expected) <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_the_native_group_norm_refuses_what_it_cannot_normalise():
    weight, bias = torch.ones(6), torch.zeros(6)
    x = torch.randn(1, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="channels-last map"):
        native_module.native().group_norm(x.contiguous(), weight, bias, 3, 1e-5, False)
    with pytest.raises(RuntimeError, match="split into the groups"):
        native_module.native().group_norm(x, weight, bias, 4, 1e-5, False)
    with pytest.raises(RuntimeError, match="per channel"):
        native_module.native().group_norm(x, torch.ones(3), bias, 3, 1e-5, False)
    with pytest.raises(RuntimeError, match="per image and channel"):
        native_module.native().group_norm(x, weight, bias, 3, 1e-5, False, torch.zeros(5))


# A fresh process builds the kernels without AVX-512 (x86-64-v3: AVX2 and FMA) and checks the
# portable loops against the references of the tests above (this module, imported from its
# folder, the first argument).
PORTABLE_BUILD = """
import sys, torch
from torch.utils import cpp_extension
from moebius.nn.native import SOURCES
sys.path.insert(0, sys.argv[1])
from test_native import _gated_depthwise, _group_norm, _relative_error, _window_sum
cpp_extension.load(name="moebius_portable_check", sources=[str(s) for s in SOURCES],
                   extra_cflags=["-O2", "-march=x86-64-v3", "-fopenmp"],
                   extra_ldflags=["-fopenmp"], is_python_module=False)
ops = torch.ops.moebius
generator = torch.Generator().manual_seed(1)
def randn(*shape):
    return torch.randn(*shape, generator=generator)
worst = {}
for dtype in (torch.float32, torch.bfloat16):
    for height, width, half in [(9, 20, 40), (1, 1, 5), (7, 1, 70)]:
        h, w, b = randn(2, height * width, 2 * half), randn(2 * half, 1, 3, 3), randn(2 * half)
        h, w, b = h.to(dtype), w.to(dtype), b.to(dtype)
        got = ops.gated_depthwise(h, w, b, height, width)
        error = _relative_error(got, _gated_depthwise(h, w, b, height, width))
        worst[dtype] = max(worst.get(dtype, 0), error)
    norm = torch.nn.GroupNorm(3, 60)
    with torch.no_grad():
        norm.weight.copy_(randn(60)), norm.bias.copy_(randn(60))
    x = (2 * randn(2, 60, 23, 29) + 50).to(dtype).contiguous(memory_format=torch.channels_last)
    for silu in (False, True):
        got = ops.group_norm(x, norm.weight, norm.bias, 3, norm.eps, silu)
        worst[dtype] = max(worst[dtype], _relative_error(got, _group_norm(x, norm, silu)))
    a, b, out = randn(3, 37, 5).to(dtype), randn(3, 5, 7).to(dtype), randn(3, 37, 7).to(dtype)
    expected = out.double() + a.double() @ b.double()
    ops.small_products(a, b, out, True)
    worst[dtype] = max(worst[dtype], _relative_error(out, expected))
    q, bank, values = randn(2, 35, 8, 6), randn(6, 9) / 3, randn(2, 8 * 9, 6)
    q, bank, values, y = q.to(dtype), bank.to(dtype), values.to(dtype), randn(2, 35, 8, 6).to(dtype)
    expected = _window_sum(q, bank, values, y, 9, 3)
    ops.window_contraction(q, bank, values, y, 9, 3)
    worst[dtype] = max(worst[dtype], _relative_error(y, expected))
print(worst[torch.float32], worst[torch.bfloat16])
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="an x86-64 build flag")
def test_the_portable_loops_compute_what_the_vector_code_does(tmp_path):
    env = os.environ | {"TORCH_EXTENSIONS_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PORTABLE_BUILD, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    float32, bfloat16 = map(float, done.stdout.split())
    assert float32 <= 1e-6 and bfloat16 <= 1e-2


def test_the_build_is_named_for_this_cpu_and_torch():
    name = native_module.extension_name()
    assert name.isidentifier() and native_module.cpu_signature() in name


def test_turned_off_the_kernel_is_never_chosen():
    """With MOEBIUS_NATIVE_KERNELS=0 the engine refuses, and tuning a window contraction picks
    among the others (in a fresh process: a build is looked for once per process)."""
    script = """
import torch
from moebius.nn import engines, native
from moebius.nn.kernels import WindowContraction
try:
    native.native()
except native.NativeUnavailable as error:
    print("refused:", error)
b, n, heads, k, r, wide = 1, 16 * 30, 8, 40, 15, 30  # 30 rows of 16 on a 30-wide grid
c = WindowContraction(torch.randn(b, n, heads, k), torch.randn(k, r * r),
                      torch.randn(b, 45 * wide, k), torch.zeros(b, n, heads, k), wide, r)
with torch.inference_mode():
    engines.window_contraction(c)
(entry,) = [e for key, e in engines.table().choices.items() if key.startswith("window")]
print(sorted(entry["ms"]))
"""
    env = os.environ | {native_module.NATIVE_ENV: "0", "MOEBIUS_ENGINES": "tune"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert "refused: moebius's native kernels are unavailable: turned off" in done.stdout
    assert "native-windows" not in done.stdout and "banded-windows" in done.stdout
    assert "native-windows" in WINDOW_ENGINES  # the engine exists; it is simply not a candidate


def test_tuning_times_the_native_kernel_beside_the_others(tmp_path, monkeypatch):
    from moebius.nn import engines

    monkeypatch.setenv(engines.MODE_ENV, "tune")
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path))
    b, n, heads, k, r, wide = 1, 16 * 30, 8, 40, 15, 30  # 30 rows of 16 on a 30-wide grid
    c = WindowContraction(
        torch.randn(b, n, heads, k),
        torch.randn(k, r * r),
        torch.randn(b, 45 * wide, k),
        torch.zeros(b, n, heads, k),
        wide,
        r,
    )
    with torch.inference_mode():
        engines.window_contraction(c)
    (entry,) = [e for key, e in engines.table().choices.items() if key.startswith("window")]
    assert set(entry["ms"]) == set(WINDOW_ENGINES)


def test_a_report_records_the_kernels_without_building_them():
    """bench.json says whether the kernels were built; asking must not build them (in a fresh
    process: a build is looked for once per process)."""
    script = """
from moebius.nn import engines, native
print(engines.report()["native_kernels"])
native.native()
print(engines.report()["native_kernels"])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[:2] == ["not used", "built"]
