"""moebius.nn.engines / kernels: every engine computes the same maths, the tuner's choice is
timed once, cached per machine and used, and a broken cache is tuned again."""

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_vae
from torch import nn

import moebius
from moebius.bench.flops import measured_flops
from moebius.models.lcg import category_ids
from moebius.nn import engines
from moebius.nn.adopt import adopt
from moebius.nn.engines import CACHE_ENV, MODE_ENV, Linear, conv2d, linear
from moebius.nn.gla import gla_recurrent
from moebius.nn.kernels import (
    CONV_ENGINES,
    GATED_DEPTHWISE_ENGINES,
    GLA_ENGINES,
    GROUP_NORM_ENGINES,
    LINEAR_ENGINES,
    SMALL_PRODUCT_ENGINES,
    WINDOW_ENGINES,
    GatedDepthwise,
    GroupNormCall,
    LinearAttention,
    SmallProducts,
    WindowContraction,
)

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # relative to the largest magnitude


def _close(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    scale = expected.float().abs().max().item()
    assert (got.float() - expected.float()).abs().max().item() <= TOLERANCE[dtype] * scale


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    """Tuning on, into an empty cache folder of its own."""
    monkeypatch.setenv(MODE_ENV, "tune")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("engine", list(LINEAR_ENGINES))
@pytest.mark.parametrize(
    "epilogue", [{}, {"activation": "silu"}, {"residual": True}, {"activation": "relu"}]
)
def test_every_linear_engine_computes_f_linear(engine, dtype, epilogue):
    if engine == "mkl-packed" and dtype != torch.float32:
        pytest.skip("MKL packs float32 only")
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 24).to(dtype)
    weight = nn.Parameter(torch.randn(16, 24).to(dtype), requires_grad=False)
    bias = torch.randn(16).to(dtype)
    residual = torch.randn(2, 5, 7, 16).to(dtype) if epilogue.get("residual") else None
    activation = epilogue.get("activation")
    expected = F.linear(x, weight, bias)
    if activation:
        expected = getattr(F, activation)(expected)
    if residual is not None:
        expected = expected + residual
    with torch.inference_mode(), engines.use(engine):
        _close(linear(x, weight, bias, activation=activation, residual=residual), expected, dtype)
        # A transposed view of a parameter, named as the source of its packed copy
        transposed = nn.Parameter(weight.t().contiguous(), requires_grad=False)
        got = linear(
            x, transposed.t(), bias, activation=activation, residual=residual, source=transposed
        )
        _close(got, expected, dtype)
        # 1×1 convolution weights are matrix products too
        conv_weight = nn.Parameter(weight[:, :, None, None].clone(), requires_grad=False)
        got = linear(x, conv_weight, bias, activation=activation, residual=residual)
        _close(got, expected, dtype)


def test_a_packed_weight_follows_in_place_changes():
    x = torch.randn(6, 8)
    weight = nn.Parameter(torch.randn(5, 8), requires_grad=False)
    with torch.inference_mode(), engines.use("onednn-packed"):
        before = linear(x, weight)
        with torch.no_grad():
            weight.mul_(2)  # as loading or folding weights does
        torch.testing.assert_close(linear(x, weight), 2 * before)


def test_a_packed_weight_follows_a_conversion_to_another_dtype():
    """``module.to(dtype)`` swaps each parameter's data but keeps the Parameter and its
    version: what was packed from the old data must not be reused (the VAE's up-sampling
    phases, made from its convolutions, failed after bfloat16 → float32)."""
    vae = adopt(tiny_vae(seed=3))
    latent = torch.randn(1, 4, 6, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        vae.decode(latent)
        vae.to(torch.bfloat16)
        vae.decode(latent.bfloat16())
        vae.to(torch.float32)
        got = vae.decode(latent).sample
        expected = copy.deepcopy(vae).decode(latent).sample  # new parameters: nothing cached
    assert got.dtype == torch.float32
    _close(got, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("engine", list(CONV_ENGINES))
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 8, 3, stride=2, padding=1),
        nn.Conv2d(16, 8, 1),
        nn.Conv2d(16, 8, 1, bias=False),
    ],
    ids=["depthwise", "stride2", "1x1", "1x1-no-bias"],
)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_every_conv_engine_computes_the_module(engine, dtype, conv, activation):
    torch.manual_seed(2)
    conv = copy.deepcopy(conv).to(dtype).requires_grad_(False)
    x = torch.randn(2, 16, 9, 7).to(dtype)
    expected = conv(x)
    if activation:
        expected = F.relu(expected)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), engines.use(engine):
        got = conv2d(channels_last, conv, activation=activation)
        _close(got.contiguous(), expected, dtype)
        residual = torch.randn_like(expected).contiguous(memory_format=torch.channels_last)
        got = conv2d(channels_last, conv, activation=activation, residual=residual)
        _close(got.contiguous(), expected + residual, dtype)
    with torch.inference_mode():
        assert torch.equal(conv2d(x, conv), conv(x))  # channels-first maps take the module


@pytest.fixture(scope="module")
def fused_student():
    torch.manual_seed(3)
    model = moebius.build_model("tests/fixtures/moebius_tiny_a.yaml").eval()
    for module in model.modules():  # BatchNorm statistics away from the identity
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.fuse()


@pytest.mark.parametrize("engine", list(WINDOW_ENGINES))
@pytest.mark.parametrize(
    "height", [3, 4]
)  # padded grids of 27 (three bands, 3 alone) and 40 (five)
def test_every_window_engine_computes_the_local_window_sum(engine, height):
    """On image positions: position (row, x)'s window starts at value row row·wide + x."""
    b, heads, k, v, r = 2, 3, 4, 5, 3
    width, pad = 7 if height == 3 else 8, 1
    wide = width + 2 * pad
    n = height * width
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(b, n, heads, k, generator=generator)
    bank = torch.randn(k, r * r, generator=generator)
    values = torch.randn(b, (height + 2 * pad + 1) * wide, v, generator=generator)
    corners = torch.tensor([row * wide + x for row in range(height) for x in range(width)])
    expected = torch.zeros(b, n, heads, v)
    for dy in range(r):
        for dx in range(r):
            taps = q @ bank[:, dy * r + dx]  # (b, n, heads)
            shifted = values[:, corners + dy * wide + dx]  # (b, n, v)
            expected += taps[..., None] * shifted[:, :, None, :]
    window = WindowContraction(q, bank, values, torch.zeros(b, n, heads, v), wide, r)
    got = WINDOW_ENGINES[engine](replace(window, linear=lambda x, w, source=None: F.linear(x, w)))
    _close(got, expected, torch.float32)


@pytest.mark.parametrize("engine", list(GATED_DEPTHWISE_ENGINES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_gated_depthwise_engine_computes_mixffns_middle(engine, dtype):
    """value · silu(gate) of the depthwise 3×3 conv's two halves, against the conv module on a
    channels-first map in float64."""
    b, height, width, half = 2, 5, 7, 19  # 19 channels: a whole vector of 16 and 3 lanes
    generator = torch.Generator().manual_seed(8)
    conv = torch.nn.Conv2d(2 * half, 2 * half, 3, padding=1, groups=2 * half)
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    h = torch.randn(b, height * width, 2 * half, generator=generator).to(dtype)
    conv = conv.to(dtype)
    grid = h.transpose(1, 2).reshape(b, 2 * half, height, width)
    d = copy.deepcopy(conv).double()(grid.double())
    value, gate = d.flatten(2).transpose(1, 2).chunk(2, dim=-1)
    expected = value * F.silu(gate)
    with torch.inference_mode():
        got = GATED_DEPTHWISE_ENGINES[engine](GatedDepthwise(h, conv, (height, width)))
    assert got.shape == (b, height * width, half) and got.dtype == dtype
    assert got.is_contiguous()
    _close(got, expected.to(dtype), dtype)


@pytest.mark.parametrize("engine", list(GROUP_NORM_ENGINES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_added", [False, True], ids=["x", "x+added"])
def test_every_group_norm_engine_is_exact_with_large_offsets(engine, dtype, activation, with_added):
    """Against the module in float64 on a map whose groups sit far from zero (where a one-pass
    E[x²] − E[x]² variance loses its digits), channels of 16 + 4 lanes; with a value per image
    and channel added before the norm (the time embedding of a residual block)."""
    generator = torch.Generator().manual_seed(9)
    norm = torch.nn.GroupNorm(4, 40)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(40, generator=generator))
        norm.bias.copy_(torch.randn(40, generator=generator))
    x = torch.randn(2, 40, 5, 7, generator=generator) + 300.0
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    added = 3 * torch.randn(2, 40, generator=generator) if with_added else None
    shifted = x.double() if added is None else x.double() + added.double()[:, :, None, None]
    expected = copy.deepcopy(norm).double()(shifted)
    expected = expected if activation is None else F.silu(expected)
    with torch.inference_mode():
        call = GroupNormCall(x, norm.to(dtype), activation, added)
        got = GROUP_NORM_ENGINES[engine](call)
    assert got.is_contiguous(memory_format=torch.channels_last)
    _close(got, expected.to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_engine_gives_the_student_the_same_output(fused_student, dtype):
    model = copy.deepcopy(fused_student).to(dtype)
    x = torch.randn(2, 9, 16, 24, generator=torch.Generator().manual_seed(4))
    ids = torch.cat([category_ids("foreground", 1), category_ids("background", 1)])
    outputs = {}
    with torch.inference_mode():
        for engine in (
            "aten",
            *LINEAR_ENGINES,
            *CONV_ENGINES,
            *WINDOW_ENGINES,
            *GATED_DEPTHWISE_ENGINES,
            *GROUP_NORM_ENGINES,
            *SMALL_PRODUCT_ENGINES,
        ):
            with engines.use(engine):
                outputs[engine] = model(x, torch.tensor([500]), ids).sample.float()
    reference = outputs.pop("aten")
    scale = reference.abs().max()
    for engine, out in outputs.items():
        error = (out - reference).abs().max() / scale
        # float32: rounding; bfloat16: a few of its rounding steps through the network
        assert error <= (1e-5 if dtype == torch.float32 else 5e-2), engine


@pytest.mark.parametrize("engine", list(SMALL_PRODUCT_ENGINES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_start", [False, True], ids=["bmm", "baddbmm"])
def test_every_small_product_engine_computes_bmm(engine, dtype, with_start):
    generator = torch.Generator().manual_seed(9)
    a = torch.randn(2, 70, 12, generator=generator).to(dtype)
    b = torch.randn(2, 12, 50, generator=generator).to(dtype)
    start = torch.randn(2, 70, 50, generator=generator).to(dtype) if with_start else None
    expected = a.double() @ b.double() + (0 if start is None else start.double())
    with torch.inference_mode():
        got = SMALL_PRODUCT_ENGINES[engine](SmallProducts(a, b, start))
    _close(got, expected.to(dtype), dtype)


def test_small_products_are_tuned_cached_and_used(tuning):
    a, b = torch.randn(2, 4096, 40), torch.randn(2, 40, 40)
    start = torch.randn(2, 4096, 40)
    expected = torch.baddbmm(start, a, b)
    with torch.inference_mode():
        _close(engines.small_products(a, b, start.clone()), expected, torch.float32)
    ((key, entry),) = json.loads(engines.cache_path().read_text())["choices"].items()
    assert key == "products float32 2x4096x40x40 start"
    assert set(entry["ms"]) == set(SMALL_PRODUCT_ENGINES)
    assert entry["engine"] == min(entry["ms"], key=entry["ms"].get)
    with engines.use(next(iter(set(SMALL_PRODUCT_ENGINES) - {entry["engine"]}))):
        _close(engines.small_products(a, b, start.clone()), expected, torch.float32)


def test_the_tuned_choice_is_timed_once_cached_and_used(tuning):
    x, weight = torch.randn(512, 256), torch.randn(128, 256)
    expected = F.linear(x, weight)
    with torch.inference_mode():
        _close(linear(x, weight), expected, torch.float32)
    path = engines.cache_path()
    assert path.parent == tuning
    document = json.loads(path.read_text())
    assert document["schema"] == engines.SCHEMA and document["threads"] == 1
    ((key, entry),) = document["choices"].items()
    assert key == "linear float32 512x256x128"
    assert "aten" in entry["ms"] and entry["engine"] == min(entry["ms"], key=entry["ms"].get)
    assert engines.report()["choices"] == {key: entry["engine"]}
    # A row count in the same power-of-two bucket reuses the choice: nothing is timed again.
    with torch.inference_mode():
        _close(linear(x[:300], weight), expected[:300], torch.float32)
    assert json.loads(path.read_text()) == document


def _linear_attention(requires_grad: bool = False) -> LinearAttention:
    """A GLA call large enough to be tuned: 2 images × 4 heads × 1024 tokens, d_k 8, d_v 16."""
    generator = torch.Generator().manual_seed(7)
    q, k, v, logits = (torch.randn(2, 4, 1024, d, generator=generator) for d in (8, 8, 16, 8))
    return LinearAttention(q.requires_grad_(requires_grad), k, v, F.logsigmoid(logits) / 16, 0.5)


def test_every_gla_chunk_size_computes_the_recurrence():
    a = _linear_attention()
    expected = gla_recurrent(a.q, a.k, a.v, a.g, a.scale)
    for engine in GLA_ENGINES:
        with torch.inference_mode(), engines.use(engine):
            _close(engines.gated_linear_attention(a), expected, torch.float32)


def test_the_gla_chunk_size_is_tuned_cached_and_used_where_no_gradient_flows(tuning):
    a = _linear_attention()
    expected = gla_recurrent(a.q, a.k, a.v, a.g, a.scale)
    with torch.inference_mode():
        _close(engines.gated_linear_attention(a), expected, torch.float32)
    ((key, entry),) = json.loads(engines.cache_path().read_text())["choices"].items()
    assert key == "gla float32 2x4x1024 k8 v16"
    assert set(entry["ms"]) == set(GLA_ENGINES)
    assert entry["engine"] == min(entry["ms"], key=entry["ms"].get)
    # A new process reads the choice back from the file instead of timing again.
    assert engines.EngineTable(engines.cache_path()).engine(key, GLA_ENGINES) == entry["engine"]
    # Training keeps the default chunks: the backward pass was not timed.
    trained = _linear_attention(requires_grad=True)
    engines.retune()
    out = engines.gated_linear_attention(trained)
    out.sum().backward()
    assert trained.q.grad is not None and not engines.cache_path().exists()
    _close(out.detach(), expected, torch.float32)


def test_every_engine_gives_the_vae_the_same_output():
    """The VAE the pipeline adopts (channels-last maps on the engines) against diffusers' own
    module on channels-first maps, to float32 rounding."""
    plain = tiny_vae(seed=5)
    adopted = adopt(copy.deepcopy(plain))
    image = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.inference_mode():
        expected = plain.decode(plain.encode(image).latent_dist.mean).sample
        fast = image.contiguous(memory_format=torch.channels_last)
        for engine in ("aten", *LINEAR_ENGINES, *CONV_ENGINES, *GROUP_NORM_ENGINES):
            with engines.use(engine):
                latent = adopted.encode(fast).latent_dist.mean
                got = adopted.decode(latent.contiguous(memory_format=torch.channels_last))
            error = (got.sample - expected).abs().max() / expected.abs().max()
            assert error <= 1e-5, engine


# What a fresh process runs: one product on the tuned engines, then what it knows of them.
ONE_PRODUCT = """
import json, sys, torch
from moebius.nn import engines
torch.set_num_threads(1)
x, weight = torch.randn(512, 256), torch.randn(128, 256)
with torch.inference_mode():
    assert engines.linear(x, weight).shape == (512, 128)
json.dump(engines.report(), sys.stdout)
"""


def test_a_second_process_reads_the_cache_and_times_nothing(tuning):
    def fresh_process() -> dict:
        done = subprocess.run(
            [sys.executable, "-c", ONE_PRODUCT],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = fresh_process()
    path = engines.cache_path(threads=1)
    assert first["cache"] == str(path) and first["tuning_seconds"] > 0
    assert list(first["choices"]) == ["linear float32 512x256x128"]
    written = path.read_bytes()
    second = fresh_process()
    assert second["tuning_seconds"] == 0 and second["choices"] == first["choices"]
    assert path.read_bytes() == written


def test_retune_times_the_shapes_again(tuning):
    """What ``moebius bench --tune`` does first: a cached choice is forgotten and timed anew."""
    key = "linear float32 512x256x128"
    stale = {"engine": "onednn-conv", "ms": {"onednn-conv": 1e9}}
    engines.cache_path().write_text(json.dumps({"schema": engines.SCHEMA, "choices": {key: stale}}))
    assert engines.table().engine(key, LINEAR_ENGINES) == "onednn-conv"
    engines.retune()
    x, weight = torch.randn(512, 256), torch.randn(128, 256)
    with torch.inference_mode():
        _close(linear(x, weight), F.linear(x, weight), torch.float32)
    assert engines.table().tuning_seconds > 0
    entry = json.loads(engines.cache_path().read_text())["choices"][key]
    assert entry != stale and "aten" in entry["ms"]


@pytest.mark.parametrize("engine", ["onednn-conv", "mkl-packed"])
def test_a_cached_choice_is_used_without_timing(tuning, engine):
    key = "linear float32 512x256x128"
    choices = {key: {"engine": engine, "ms": {}}}
    engines.cache_path().write_text(json.dumps({"schema": engines.SCHEMA, "choices": choices}))
    x, weight = torch.randn(512, 256), torch.randn(128, 256)
    with torch.inference_mode(), torch.profiler.profile() as prof:
        got = linear(x, weight)
    ops = {event.name for event in prof.events()}
    marker = {"onednn-conv": "aten::mkldnn_convolution", "mkl-packed": "mkl::_mkl_linear"}
    assert marker[engine] in ops and "aten::mm" not in ops
    _close(got, F.linear(x, weight), torch.float32)
    assert engines.table().tuning_seconds == 0


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"schema": "other"}',
        '{"schema": "moebius-engines/5", "choices": {"k": {"engine": "gone"}}}',
        "",
        # the formats before products were timed on their own row count, before banded window
        # contractions were a candidate, before the native one was, and before the native
        # gated depthwise was
        '{"schema": "moebius-engines/1", "choices": {"linear float32 512x256x128": '
        '{"engine": "onednn-packed", "ms": {}}}}',
        '{"schema": "moebius-engines/2", "choices": {"linear float32 512x256x128": '
        '{"engine": "onednn-packed", "ms": {}}}}',
        '{"schema": "moebius-engines/3", "choices": {"linear float32 512x256x128": '
        '{"engine": "onednn-packed", "ms": {}}}}',
        '{"schema": "moebius-engines/4", "choices": {"linear float32 512x256x128": '
        '{"engine": "onednn-packed", "ms": {}}}}',
    ],
)
def test_a_broken_or_older_cache_is_tuned_again(tuning, content):
    path = engines.cache_path()
    path.write_text(content)
    x, weight = torch.randn(512, 256), torch.randn(128, 256)
    with torch.inference_mode():
        _close(linear(x, weight), F.linear(x, weight), torch.float32)
    choices = json.loads(path.read_text())["choices"]
    assert list(choices) == ["linear float32 512x256x128"]
    assert choices["linear float32 512x256x128"]["ms"]  # timed here, not read


def test_the_cache_file_is_per_machine_threads_and_torch_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = engines.cache_path(threads=3)
    assert path.parent == tmp_path / "moebius"
    assert path.name.startswith("engines-") and "-3t-" in path.name
    assert torch.__version__.split("+")[0] in path.name


def test_small_products_and_autocast_take_pytorchs_own_kernels(tuning):
    with torch.inference_mode(), torch.profiler.profile() as prof:
        linear(torch.randn(4, 8), torch.randn(3, 8))  # below the tuning threshold
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(torch.randn(512, 256), torch.randn(128, 256))
    assert out.dtype == torch.bfloat16
    assert not engines.cache_path().exists()
    assert "aten::mkldnn_convolution" not in {event.name for event in prof.events()}


def test_unknown_engine_names_are_refused():
    with pytest.raises(ValueError, match="unknown engine"), engines.use("fastest"):
        pass


def test_linear_gradients_match():
    torch.manual_seed(1)
    ours, reference = Linear(10, 6), nn.Linear(10, 6)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 10, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    ours(x).square().sum().backward()
    reference(x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("engine", ["onednn-conv", "onednn-packed"])
def test_flops_are_counted_whatever_the_engine(engine):
    x, weight = torch.randn(2, 5, 12), torch.randn(9, 12)
    with engines.use(engine):
        assert measured_flops(linear, x, weight) == 2 * 2 * 5 * 12 * 9
        conv = nn.Conv2d(16, 8, 3, padding=1)
        x = torch.randn(1, 16, 6, 6).contiguous(memory_format=torch.channels_last)
        assert measured_flops(conv2d, x, conv) == 2 * 8 * 16 * 9 * 36
