"""Matrix products and convolutions sent to oneDNN directly on CPU in float32.

PyTorch sends float32 matrix products on CPU to MKL, whose GEMM runs at about half of
oneDNN's speed on CPUs MKL has no tuned path for (on a 2-core AMD EPYC, 210 against
436 GFLOP/s: docs/bench/student-growth), and sends 1×1 convolutions of small batches
on one thread to a slow fallback. These functions call oneDNN's convolution instead: a matrix
product is a 1×1 convolution over the rows seen as a channels-last (1, C, N, 1) map.
Results equal the usual ops to float32 rounding. Other devices and dtypes, anything
under autocast (whose casting the usual ops do), code being traced by
``torch.compile`` (which picks its own kernels) and code being traced into a graph for another
runtime (ONNX export, which knows only the usual ops) take the usual ops.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _use_onednn(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)``, through oneDNN for a 1×1 conv on a float32 channels-last map on CPU
    (PyTorch already sends larger kernels to oneDNN, and picks better for depthwise ones)."""
    if not (
        conv.kernel_size == (1, 1)
        and _use_onednn(x)
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return conv(x)
    return torch.ops.aten.mkldnn_convolution(
        x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN for float32 on CPU."""
    if not _use_onednn(x):
        return F.linear(x, weight, bias)
    *lead, channels = x.shape
    as_map = x.reshape(1, -1, 1, channels).permute(0, 3, 1, 2)
    out = torch.ops.aten.mkldnn_convolution(
        as_map, weight[:, :, None, None], bias, (0, 0), (1, 1), (1, 1), 1
    )
    return out.permute(0, 2, 3, 1).reshape(*lead, -1)


class Linear(nn.Linear):
    """``nn.Linear`` whose float32 CPU product goes through oneDNN (see :func:`linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
