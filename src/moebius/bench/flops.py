"""Floating-point operation counts: measured with ``torch.utils.flop_counter`` and, for the
student, derived in closed form from its config so the two can check each other.

Both count 2 FLOPs per multiply-add and only matrix products and convolutions
(normalisation, activations and softmax are left out), as the paper's table does.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from moebius.nn import engines


def measured_flops(fn, *args) -> int:
    """FLOPs ``fn(*args)`` performs, counted by ``torch.utils.flop_counter`` (2 per MAC) on
    PyTorch's own kernels, whose formulas it knows (every engine does the same arithmetic)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode(), engines.use("aten"):
        fn(*args)
    return int(counter.get_total_flops())


def _down(side: int) -> int:
    return (side + 1) // 2  # 3×3 conv, stride 2, padding 1


def student_flops(config, height: int, width: int, batch: int = 1) -> int:
    """Closed-form FLOPs of one plain-path student forward on a (height, width) latent."""
    c0 = config.block_out_channels[0]
    temb, heads, m, ctx = 4 * c0, config.heads, config.context_tokens, config.cross_attention_dim
    r2 = config.local_receptive_field**2
    macs = c0 * temb + temb * temb + m * config.encoder_hid_dim * ctx  # time MLP, context proj

    def dwconv(n, cin, cout, k=3):
        return n * cin * k * k + n * cin * cout

    def resblock(n, cin, cout):
        shortcut = n * cin * cout if cin != cout else 0
        return dwconv(n, cin, cout) + temb * cout + dwconv(n, cout, cout) + shortcut

    def transformer(n, c):
        k = v = c // heads
        hidden = int(config.mix_mlp_ratio * c)
        local = n * c * (c + k + v) + n * k * v + n * v * k * r2 + 2 * n * heads * k * v
        interactive = n * c * c + 2 * m * ctx * k + m * k * v + n * m * k * v
        interactive += 2 * n * heads * k * v
        mixffn = n * c * 2 * hidden + n * 2 * hidden * 9 + n * hidden * c
        return 2 * n * c * c + local + interactive + mixffn

    widths = config.block_out_channels
    sizes = [(height, width)]
    for _ in widths[1:]:
        sizes.append((_down(sizes[-1][0]), _down(sizes[-1][1])))
    n = [h * w for h, w in sizes]
    macs += dwconv(n[0], config.in_channels, c0)
    skips = [c0]
    for level, c in enumerate(widths):
        cin = widths[max(level - 1, 0)]
        for layer in range(config.layers_per_block):
            macs += resblock(n[level], cin if layer == 0 else c, c) + transformer(n[level], c)
            skips.append(c)
        if level < len(widths) - 1:
            macs += n[level + 1] * c * c * 9
            skips.append(c)
    h = widths[-1]
    for level in reversed(range(len(widths))):
        c = widths[level]
        for _ in range(config.layers_per_block + 1):
            macs += resblock(n[level], h + skips.pop(), c) + transformer(n[level], c)
            h = c
        if level > 0:
            macs += n[level - 1] * c * c * 9
    macs += dwconv(n[0], c0, config.out_channels)
    return 2 * batch * macs
