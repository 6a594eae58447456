"""Freshly built networks start from the authors' initialisation (it shapes training from scratch)."""

import math

import pytest
import torch
from torch import nn

import moebius

STUDENT = {
    "model_type": "moebius",
    "block_out_channels": [16, 32, 32],
    "cross_attention_dim": 32,
    "encoder_hid_dim": 48,
    "norm_num_groups": 8,
    "sample_size": 8,
}
TEACHER = {
    "model_type": "pixelhacker",
    "block_out_channels": [16, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "encoder_hid_dim": 48,
    "norm_num_groups": 8,
    "heads": 2,
    "sample_size": 8,
}


@pytest.mark.parametrize("config", [STUDENT, TEACHER], ids=["student", "teacher"])
def test_linear_layers_start_xavier_uniform_with_zero_biases(config):
    torch.manual_seed(0)
    network = moebius.build_model(config).diff_model
    layers = [m for m in network.modules() if isinstance(m, nn.Linear)]
    assert layers
    weights = []
    for layer in layers:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound
        if layer.bias is not None:
            assert not layer.bias.any()
        weights.append(layer.weight.flatten() / bound)
    # pooled over layers, weight / bound is uniform on [-1, 1]: variance 1/3. PyTorch's default
    # (bound 1/√fan_in, smaller by √((fan_in + fan_out)/6)) would give about a third of that here.
    pooled = torch.cat(weights)
    assert pooled.var().item() == pytest.approx(1 / 3, rel=0.05)


def test_a_near_identity_start_passes_the_input_through_every_block():
    from moebius.nn import DWResBlock, Transformer2D
    from moebius.nn.initialisation import start_near_identity

    torch.manual_seed(0)
    network = moebius.build_model(STUDENT).diff_model
    start_near_identity(network)
    context = torch.randn(2, 10, 32)  # the LCG context: 10 tokens
    transformers = [m for m in network.modules() if isinstance(m, Transformer2D)]
    blocks = [m for m in network.modules() if isinstance(m, DWResBlock)]
    assert transformers and blocks
    for transformer in transformers:
        width = transformer.proj_out.in_channels
        h = torch.randn(2, width, 8, 8)
        assert torch.equal(transformer(h, context), h)
    # each residual block's second unit passes its input on unchanged
    for block in blocks:
        h = torch.randn(2, block.conv2.conv_pw.in_channels, 8, 8)
        torch.testing.assert_close(block.conv2.eval()(h), h)
    # conv_in's ReLU passes (nearly) every value of a unit-variance input
    unit = network.conv_in.train()
    pre = unit.bn1(unit.conv_dw(torch.randn(4, 9, 8, 8)))
    assert (pre > 0).float().mean() > 0.99
    assert all(
        not layer.rel_pos_emb.any() for layer in network.modules() if hasattr(layer, "rel_pos_emb")
    )
