"""One way to load an inpainting pipeline for a backend, for every command that inpaints.

``torch`` runs the model with PyTorch (:class:`~moebius.pipeline.MoebiusInpaintPipeline`);
``onnxruntime`` and ``openvino`` run a directory written by ``moebius export``
(:class:`~moebius.export.runtime.ExportedInpaintPipeline`) without importing PyTorch.
"""

import argparse
import sys
from collections.abc import Callable

from moebius.errors import InputError
from moebius.weights import DEFAULT_VARIANT

BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_HELP = (
    "torch (default), or onnxruntime / openvino to run a directory written by `moebius export` "
    "(pass it as --model) without PyTorch"
)


def add_backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help=BACKEND_HELP)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def load_pipeline(
    model: str = "auto",
    backend: str = "torch",
    *,
    variant: str = DEFAULT_VARIANT,
    model_config: str | None = None,
    device="auto",
    dtype="auto",
    threads: int | None = None,
    note: Callable[[str], None] = _stderr,
):
    """A ready pipeline for ``backend``.

    ``torch``: ``model`` is anything :meth:`MoebiusInpaintPipeline.from_pretrained` loads, or
    ``auto`` (the official weights, else the bundled demo; ``note`` is told why); ``device`` and
    ``dtype`` are names (``auto``, ``cpu``, ``float32``, …; see :mod:`moebius.runtime`) or
    resolved PyTorch objects; the VAE is tiled above 1024 px and sliced. ``onnxruntime`` /
    ``openvino``: ``model`` is an export directory; the CPU only; ``dtype`` ``auto`` or
    ``float32`` (OpenVINO also ``bfloat16``). ``threads``: CPU threads of the networks.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "torch":
        return _torch_pipeline(model, variant, model_config, device, dtype, threads, note)
    from moebius.export.runtime import ExportedInpaintPipeline, exported_directory

    if str(device) not in ("auto", "cpu"):
        raise InputError(f"the {backend} backend runs on the CPU, not {device}")
    if not exported_directory(model):
        raise InputError(
            f"--backend {backend} runs a directory written by `moebius export`; {model} is not "
            f"one (make it with `moebius export {'onnx' if backend == 'onnxruntime' else backend}"
            " --model MODEL OUT_DIR`)"
        )
    return ExportedInpaintPipeline.from_exported(model, backend, threads=threads, dtype=str(dtype))


def _torch_pipeline(model, variant, model_config, device, dtype, threads, note):
    import torch
    from diffusers.utils import logging as diffusers_logging

    from moebius.pipeline import MoebiusInpaintPipeline
    from moebius.runtime import resolve_device, resolve_dtype

    diffusers_logging.set_verbosity_error()  # its load-time advice is not for our users
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    if model == "auto":
        from moebius.weights import default_model

        model, why = default_model(variant)
        if why:
            note(f"note: {why}")
    pipe = MoebiusInpaintPipeline.from_pretrained(
        model, variant=variant, model_config=model_config, device=device, dtype=dtype
    )
    pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
    return pipe
