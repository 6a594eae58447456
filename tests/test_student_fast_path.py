"""The student's fast inference path against its plain (formula-literal) path and the fixture."""

import copy

import pytest
import torch
import torch.nn.functional as F

import moebius
from moebius.models.checkpoint import load_state_dict_strict
from moebius.nn import InteractiveLambda, LocalLambda, MixFFN, Upsample
from moebius.nn.fusion import group_norm, is_plain, set_plain
from moebius.nn.sampling import by_phases, upsample_by_phases


def _fixture_model(tiny_config_path, tiny_state_dict):
    model = moebius.build_model(tiny_config_path)
    load_state_dict_strict(model, tiny_state_dict)
    return model.eval()


def _randomise_batchnorm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def test_fast_path_is_the_default_and_switchable(tiny_config_path):
    model = moebius.build_model(tiny_config_path)
    assert not is_plain(model)
    set_plain(model, True)
    assert all(m.plain for m in model.modules() if hasattr(m, "plain"))
    set_plain(model, False)
    assert not is_plain(model)


@pytest.mark.parametrize("fuse", [False, True])
def test_fast_path_matches_fixture(tiny_config_path, tiny_state_dict, tiny_fixture, fuse):
    model = _fixture_model(tiny_config_path, tiny_state_dict)
    if fuse:
        model.fuse()
    with torch.inference_mode():
        out = model(
            tiny_fixture["__input__.x"],
            tiny_fixture["__input__.timesteps"],
            tiny_fixture["__input__.input_ids"],
        )
    assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-5
    assert out.sample.is_contiguous()
    for i, block in enumerate(out.block_outputs):
        assert _close(block, tiny_fixture[f"__output__.block_outputs.{i}"]), f"block {i}"


@pytest.mark.parametrize("size", [(8, 12), (12, 8), (4, 20), (16, 16)])
def test_fast_fused_matches_plain_on_other_sizes(tiny_config_path, tiny_state_dict, size):
    plain = set_plain(_fixture_model(tiny_config_path, tiny_state_dict), True)
    _randomise_batchnorm(plain)  # so folding has something to fold
    fast = copy.deepcopy(plain)
    set_plain(fast, False).fuse()
    torch.manual_seed(0)
    x = torch.randn(2, 9, *size) * 3 + 1
    ids = torch.cat([moebius.category_ids("foreground", 1), moebius.category_ids("background", 1)])
    with torch.inference_mode():
        a, b = plain(x, torch.tensor([10, 900]), ids), fast(x, torch.tensor([10, 900]), ids)
    assert _close(b.sample, a.sample)
    for fast_block, plain_block in zip(b.block_outputs, a.block_outputs, strict=True):
        assert _close(fast_block, plain_block)


@pytest.mark.parametrize("channels,heads,field", [(32, 4, 5), (96, 2, 15), (16, 8, 3)])
def test_local_lambda_query_first_matches_plain(channels, heads, field):
    # field 15 on a 6×10 map: neighbourhoods larger than the image are all padding.
    torch.manual_seed(0)
    layer = LocalLambda(channels, heads, receptive_field=field)
    _randomise_batchnorm(layer)
    layer.eval()
    x = torch.randn(2, channels, 6, 10)
    with torch.inference_mode():
        layer.plain = True
        expected = layer(x)
        layer.plain = False
        assert _close(layer(x), expected)
        layer.fuse_batchnorm()
        assert _close(layer(x), expected)


def test_interactive_lambda_and_mixffn_match_plain():
    torch.manual_seed(0)
    context = torch.randn(2, 10, 12)
    x = torch.randn(2, 16, 3, 7)
    for layer, args in [
        (InteractiveLambda(16, 12, 10, positions=16, heads=2), (context,)),
        (MixFFN(16), ()),
    ]:
        _randomise_batchnorm(layer)
        layer.eval()
        with torch.inference_mode():
            layer.plain = True
            expected = layer(x, *args)
            layer.plain = False
            assert _close(layer(x, *args), expected), type(layer).__name__


def test_training_mode_runs_the_plain_path():
    torch.manual_seed(0)
    layer = LocalLambda(16, 2, receptive_field=3).train()
    x = torch.randn(2, 16, 4, 4)
    y = layer(x)
    # Batch statistics were updated by the plain path's BatchNorm modules.
    assert layer.norm_q.num_batches_tracked.item() == 1
    y.sum().backward()
    assert layer.to_q.weight.grad is not None


def test_channels_last_group_norm_is_exact_with_large_offsets():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 16)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    x = torch.randn(2, 16, 5, 7) + 300.0
    with torch.no_grad():
        reference = norm.double()(x.double())
        norm.float()
        nchw_error = (norm(x).double() - reference).abs().max()
        got = group_norm(x.contiguous(memory_format=torch.channels_last), norm)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # As exact as the NCHW kernel; a one-pass E[x²] − E[x]² variance is off by ~1e-2 here.
    assert (got.double() - reference).abs().max() <= 2 * nchw_error + 1e-5


def test_bfloat16_autocast_fast_path(tiny_config_path, tiny_state_dict, tiny_fixture):
    model = _fixture_model(tiny_config_path, tiny_state_dict).fuse()
    x = tiny_fixture["__input__.x"]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, tiny_fixture["__input__.timesteps"], tiny_fixture["__input__.input_ids"])
    ref = tiny_fixture["__output__.sample"]
    assert (out.sample.float() - ref).abs().max() < 0.1 * ref.abs().max()


# ------------------------------------------------------------------ up-sampling by phases
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_upsampling_by_phases_matches_nearest_then_conv(channels_last, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1, bias=bias).requires_grad_(False)
    x = torch.randn(2, 6, 5, 7)
    expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = upsample_by_phases(x, conv)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert got.shape == expected.shape and _close(got, expected)


def test_upsampler_keeps_the_textbook_form_where_phases_do_not_apply():
    up = Upsample(4)
    x = torch.randn(1, 4, 3, 3)
    assert not by_phases(x, up.conv)  # the weights want gradients: training
    up(x).sum().backward()
    assert up.conv.weight.grad is not None
    with torch.no_grad():
        assert by_phases(x, up.conv) and by_phases(x, up.conv, size=(6, 6))
        assert not by_phases(x, up.conv, size=(7, 6))  # matching an odd skip tensor
        assert up(x, size=(7, 6)).shape == (1, 4, 7, 6)


def test_phase_kernels_follow_in_place_weight_changes():
    """The phase kernel is derived once per weight; loading other weights into the same
    module (an in-place copy) must not leave the old one in use."""
    torch.manual_seed(0)
    up = Upsample(3).eval().requires_grad_(False)
    x = torch.randn(1, 3, 4, 4)
    before = up(x)
    up.load_state_dict({k: v * 2 for k, v in up.state_dict().items()})
    expected = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert _close(up(x), expected) and not _close(before, expected)


def test_adopted_vae_upsamplers_run_by_phases(monkeypatch):
    """diffusers' ``Upsample2D`` inside an adopted VAE takes the phases, with the same result."""
    from diffusers.models.upsampling import Upsample2D

    import moebius.nn.adopt as adopt_module

    torch.manual_seed(0)
    up = Upsample2D(4, use_conv=True).eval().requires_grad_(False)
    x = torch.randn(1, 4, 5, 6)
    expected = up(x)
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return upsample_by_phases(*args)

    monkeypatch.setattr(adopt_module, "upsample_by_phases", spy)
    adopt_module.adopt(up)
    assert _close(up(x), expected) and calls == [x.shape]
    assert up(x, output_size=(11, 12)).shape == (1, 4, 11, 12) and len(calls) == 1
