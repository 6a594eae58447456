"""Moebius's own C++ kernels (``moebius/nn/csrc``), compiled on first use for the running CPU.

They are built with the CPU's full instruction set (``-march=native``: AVX-512 and AVX-512
BF16 where it has them), so a build is kept per CPU kind (:func:`~moebius.cpu.cpu_signature`)
and torch version, in torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``). Building needs a C++ compiler and takes 10–30 s,
once. Where it cannot be built, or with ``MOEBIUS_NATIVE_KERNELS=0``, :func:`native` raises
and the engines that use it are never chosen (:mod:`moebius.nn.engines` skips an engine that
raises); every result is also available from PyTorch's own kernels.
"""

import functools
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from moebius.cpu import cpu_signature

NATIVE_ENV = "MOEBIUS_NATIVE_KERNELS"
SOURCES = tuple(
    Path(__file__).with_name("csrc") / name
    for name in (
        "window_contraction.cpp",
        "gated_depthwise.cpp",
        "group_norm.cpp",
        "small_products.cpp",
    )
)
# -fopenmp turns on ATen's parallel_for in the extension; the process keeps torch's OpenMP
# runtime (same soname), so both share one thread pool.
CFLAGS = ("-O3", "-march=native", "-fopenmp")

logger = logging.getLogger(__name__)


class NativeUnavailable(RuntimeError):
    """The native kernels could not be built here (or are turned off)."""


def extension_name() -> str:
    """The build's name: one per CPU kind and torch version, since the binary is specific to
    both."""
    version = re.sub(r"[^A-Za-z0-9]+", "_", torch.__version__)
    return f"moebius_native_{cpu_signature()}_torch{version}"


@functools.cache
def _build() -> tuple[Any, str]:
    if os.environ.get(NATIVE_ENV, "1").strip() == "0":
        return None, f"turned off by {NATIVE_ENV}=0"
    from torch.utils import cpp_extension

    try:
        # Registered as torch operators (torch.ops.moebius), not a Python module: no Python
        # headers needed, only PyTorch's.
        cpp_extension.load(
            name=extension_name(),
            sources=[str(path) for path in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    # A missing compiler or ninja, a compiler that rejects a flag, a failed link: each surfaces
    # as a different exception type, and all mean the same here.
    except Exception as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        logger.info("moebius native kernels unavailable: %s", reason)
        return None, reason
    return torch.ops.moebius, ""


def native() -> Any:
    """The compiled kernels (the ``torch.ops.moebius`` operators), built on the first call;
    :class:`NativeUnavailable` if they cannot be (the reason is in the message)."""
    operators, reason = _build()
    if operators is None:
        raise NativeUnavailable(f"moebius's native kernels are unavailable: {reason}")
    return operators


def native_status() -> str:
    """What reports record: ``built``, why the kernels are unavailable here, or ``not used``
    when nothing in this process asked for them (a report never builds them itself)."""
    if _build.cache_info().currsize == 0:
        return "not used"
    operators, reason = _build()
    return "built" if operators is not None else f"unavailable: {reason}"
