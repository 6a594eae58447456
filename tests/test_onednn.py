"""moebius.nn.onednn: oneDNN-routed products equal the usual ops, and are counted as FLOPs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from moebius.bench.flops import measured_flops
from moebius.nn.onednn import Linear, conv2d, linear


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12), (1, 1, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(9, 12)
    b = torch.randn(9) if bias else None
    _close(linear(x, weight, b), F.linear(x, weight, b))
    # A transposed (non-contiguous) weight, as the Local-λ kernel bank is used.
    _close(linear(x, weight.t().contiguous().t(), b), F.linear(x, weight, b))


def test_linear_is_routed_to_onednn():
    x, weight = torch.randn(4, 8), torch.randn(3, 8)
    with torch.profiler.profile() as prof:
        linear(x, weight)
    ops = {event.name for event in prof.events()}
    assert "aten::mkldnn_convolution" in ops
    assert not ops & {"aten::addmm", "aten::mm"}


def test_linear_under_autocast_matches_autocast_linear():
    x, weight, bias = torch.randn(6, 16), torch.randn(5, 16), torch.randn(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, reference = linear(x, weight, bias), F.linear(x, weight, bias)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, reference)


def test_linear_gradients_match():
    torch.manual_seed(1)
    ours, reference = Linear(10, 6), nn.Linear(10, 6)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 10, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    ours(x).square().sum().backward()
    reference(x_ref).square().sum().backward()
    _close(x.grad, x_ref.grad)
    _close(ours.weight.grad, reference.weight.grad)
    _close(ours.bias.grad, reference.bias.grad)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(16, 8, 1),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 8, 3, stride=2, padding=1),
        nn.Conv2d(16, 8, 1, bias=False),
    ],
    ids=["1x1", "depthwise", "stride2", "no-bias"],
)
def test_conv2d_matches_module(conv):
    torch.manual_seed(2)
    x = torch.randn(2, 16, 9, 7)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    _close(conv2d(channels_last, conv), conv(x))
    assert torch.equal(conv2d(x, conv), conv(x))  # channels-first maps take the module itself


def test_flop_counter_counts_onednn_products():
    x, weight = torch.randn(2, 5, 12), torch.randn(9, 12)
    assert measured_flops(linear, x, weight) == 2 * 2 * 5 * 12 * 9
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    assert measured_flops(conv2d, x, conv) == 2 * 8 * 16 * 9 * 36
