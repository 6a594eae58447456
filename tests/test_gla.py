"""The chunked GLA core against the token-by-token recurrence, and the layer's causal order."""

import pytest
import torch
import torch.nn.functional as F

from moebius.nn.attention import GatedLinearAttention
from moebius.nn.gla import gated_linear_attention, gla_chunked, gla_recurrent


def _inputs(length: int, dk: int = 4, dv: int = 6, gate_scale: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = randn(2, 3, length, dk), randn(2, 3, length, dk), randn(2, 3, length, dv)
    g = F.logsigmoid(gate_scale * randn(2, 3, length, dk)) / 4
    return q, k, v, g


# Below, at and above one chunk; 96 = 8×12 and 65 = 5×13 are non-square maps.
@pytest.mark.parametrize("length", [1, 17, 63, 64, 65, 96, 200])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_equals_recurrence(length, chunk_size):
    q, k, v, g = _inputs(length)
    expected = gla_recurrent(q, k, v, g, scale=0.5)
    got = gla_chunked(q, k, v, g, scale=0.5, chunk_size=chunk_size)
    assert got.shape == expected.shape == (2, 3, length, 6)
    assert (got - expected).abs().max() <= 1e-10


def test_chunked_survives_extreme_gates():
    # Decays of hundreds per token would overflow a split exponent in large chunks.
    q, k, v, g = (x.float() for x in _inputs(150, gate_scale=2000.0))
    assert g.min() < -100
    got = gla_chunked(q, k, v, g, scale=0.5)
    expected = gla_recurrent(q.double(), k.double(), v.double(), g.double(), scale=0.5)
    assert torch.isfinite(got).all()
    assert (got.double() - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_half_precision_runs_in_float32():
    q, k, v, g = _inputs(80)
    expected = gla_recurrent(q, k, v, g, scale=0.5)
    got = gated_linear_attention(*(x.bfloat16() for x in (q, k, v, g)), scale=0.5)
    assert got.dtype == torch.bfloat16
    assert (got.double() - expected).abs().max() <= 0.05 * expected.abs().max()


def test_gla_layer_is_causal_in_row_major_order():
    torch.manual_seed(0)
    height, width, channels = 5, 7, 16
    layer = GatedLinearAttention(channels, heads=4).double()
    tokens = torch.randn(1, height * width, channels, dtype=torch.float64)
    changed = tokens.clone()
    index = 2 * width + 3  # pixel (2, 3)
    changed[0, index] += 1.0
    with torch.no_grad():
        diff = (layer(changed) - layer(tokens)).abs().amax(dim=-1)[0]
    assert diff[:index].max() == 0
    assert (diff[index:] > 0).all()
