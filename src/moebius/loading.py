"""From a ``--model`` value and a ``--backend`` to a ready pipeline: the one rule ``moebius
inpaint`` and ``moebius serve`` share.

``torch`` (the default) runs the model with PyTorch: the official weights, else the bundled demo;
a folder or a Hub repo id; or an OpenCV fill. ``onnxruntime`` and ``openvino`` run a directory
written by ``moebius export`` with NumPy and that runtime, without importing PyTorch.
"""

import argparse
from collections.abc import Callable

from moebius.errors import InputError
from moebius.weights import DEFAULT_VARIANT

AUTO = "auto"
BACKENDS = ("torch", "onnxruntime", "openvino")
EXPORTED_BACKENDS = BACKENDS[1:]
BACKEND_HELP = (
    "torch (default), or onnxruntime / openvino to run a directory written by `moebius export` "
    "(pass it as --model) on the CPU without PyTorch; --dtype auto or float32, with openvino "
    "also bfloat16"
)


def add_backend_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--backend", default="torch", choices=BACKENDS, help=BACKEND_HELP)


def load_pipeline(
    model: str = AUTO,
    variant: str = DEFAULT_VARIANT,
    model_config: str | None = None,
    runtime=None,
    note: Callable[[str], None] | None = None,
    backend: str = "torch",
):
    """(the model's name, its pipeline) for ``model`` on ``backend``.

    ``torch``: ``auto`` (the official weights from the Hugging Face cache or downloaded, else
    the bundled ``moebius-demo``, with ``note`` told why), ``opencv-telea`` / ``opencv-ns``, a
    folder or a Hub repo id; ``runtime`` is a :class:`moebius.runtime.Runtime` (default: CPU,
    float32). ``onnxruntime`` / ``openvino``: ``model`` is an export directory; ``runtime``
    gives the thread count and the compute precision by name (see
    :func:`moebius.runtime.apply_runtime_args`)."""
    from moebius.baselines import baseline_pipeline, is_baseline

    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if is_baseline(model):
        if backend != "torch":
            raise InputError(f"{model} is OpenCV's fill, not a model for --backend {backend}")
        return model, baseline_pipeline(model)
    if backend != "torch":
        return str(model), _exported_pipeline(model, backend, runtime)

    from diffusers.utils import logging as diffusers_logging

    from moebius.pipeline import MoebiusInpaintPipeline

    diffusers_logging.set_verbosity_error()  # its load-time advice is not for our users
    if model == AUTO:
        from moebius.weights import default_model

        model, why = default_model(variant)
        if why and note is not None:
            note(why)
    if runtime is not None and note is not None:
        from moebius.runtime import bfloat16_conversion_note

        if conversion := bfloat16_conversion_note(runtime.device, runtime.dtype):
            note(conversion)
    pipe = MoebiusInpaintPipeline.from_pretrained(
        model,
        variant=variant,
        model_config=model_config,
        device=runtime.device if runtime is not None else "cpu",
        dtype=runtime.dtype if runtime is not None else None,
        fuse=True,  # BatchNorm folded into the projections: inference only, never saved
    )
    pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
    return str(model), pipe


def _exported_pipeline(model: str, backend: str, runtime):
    from moebius.export.runtime import ExportedInpaintPipeline, exported_directory

    if not exported_directory(model):
        fmt = "onnx" if backend == "onnxruntime" else backend
        raise InputError(
            f"--backend {backend} runs a directory written by `moebius export`; {model} is not "
            f"one (make it with `moebius export {fmt} OUT_DIR --model MODEL`)"
        )
    return ExportedInpaintPipeline.from_exported(
        model,
        backend,
        threads=runtime.threads if runtime is not None else None,
        dtype=runtime.dtype if runtime is not None else "float32",
    )
