"""moebius.nn.native: the C++ window kernel builds where a compiler exists, computes Local-λ's
window sum in every code path (the AVX-512 float32 and AVX-512 BF16 register kernels for 8
heads, whole and partial 16-lane vectors, odd and even windows; plain loops otherwise), and is
never chosen where it cannot be built."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from moebius.nn import native as native_module
from moebius.nn.kernels import WINDOW_ENGINES, WindowContraction

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler here"
)


def _window_sum(q, bank, values, y, wide, r):
    """The contraction term by term, in float64 from the same inputs."""
    n = q.shape[1]
    out = y.double().clone()
    taps = q.double() @ bank.double()  # (b, n, heads, r·r)
    for dy in range(r):
        for dx in range(r):
            start = dy * wide + dx
            out += taps[..., dy * r + dx, None] * values.double()[:, start : start + n, None, :]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("heads", "v", "r"),
    [
        (8, 40, 15),  # the student's top level: 2 whole vectors and 8 lanes
        (8, 16, 5),  # one whole vector
        (8, 56, 4),  # a block of 48 columns and one of 8; an even window
        (8, 80, 7),  # 48 + 32
        (3, 5, 3),  # not 8 heads: the plain loops
    ],
)
def test_the_native_kernel_computes_the_window_sum(dtype, heads, v, r):
    b, height, width = 2, 5, 7  # 5 · (7 + r − 1) positions: several 32-position blocks and a tail
    wide = width + r - 1
    n = height * wide
    generator = torch.Generator().manual_seed(11)
    q = torch.randn(b, n, heads, v, generator=generator).to(dtype)
    bank = (torch.randn(v, r * r, generator=generator) / v**0.5).to(dtype)
    values = torch.randn(b, n + (r - 1) * (wide + 1), v, generator=generator).to(dtype)
    y = torch.randn(b, n, heads, v, generator=generator).to(dtype)
    expected = _window_sum(q, bank, values, y, wide, r)
    native_module.native().window_contraction(q, bank, values, y, wide, r)
    error = (y.double() - expected).abs().max() / expected.abs().max()
    assert error <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_the_native_kernel_refuses_windows_past_the_values():
    q, bank = torch.zeros(1, 20, 8, 4), torch.zeros(4, 9)
    values, y = torch.zeros(1, 20, 4), torch.zeros(1, 20, 8, 4)
    with pytest.raises(RuntimeError, match="reach past the value rows"):
        native_module.native().window_contraction(q, bank, values, y, 10, 3)


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
b, n, heads, k, r, wide = 1, 16 * 30, 8, 40, 15, 30
c = WindowContraction(torch.randn(b, n, heads, k), torch.randn(k, r * r),
                      torch.randn(b, n + r * (wide + 1), k), torch.zeros(b, n, heads, k), wide, r)
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
    b, n, heads, k, r, wide = 1, 16 * 30, 8, 40, 15, 30
    c = WindowContraction(
        torch.randn(b, n, heads, k),
        torch.randn(k, r * r),
        torch.randn(b, n + r * (wide + 1), k),
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
