"""From a ``--model`` value to a ready pipeline: the one rule ``moebius inpaint`` and
``moebius serve`` share (official weights, else the bundled demo; or an OpenCV fill)."""

from collections.abc import Callable

from moebius.weights import DEFAULT_VARIANT

AUTO = "auto"


def load_pipeline(
    model: str = AUTO,
    variant: str = DEFAULT_VARIANT,
    model_config: str | None = None,
    runtime=None,
    note: Callable[[str], None] | None = None,
):
    """(the model's name, its pipeline) for ``model``: ``auto`` (the official weights from the
    Hugging Face cache or downloaded, else the bundled ``moebius-demo``, with ``note`` told
    why), ``opencv-telea`` / ``opencv-ns``, a folder or a Hub repo id. ``runtime`` is a
    :class:`moebius.runtime.Runtime` (default: CPU, float32)."""
    from moebius.baselines import baseline_pipeline, is_baseline

    if is_baseline(model):
        return model, baseline_pipeline(model)

    from diffusers.utils import logging as diffusers_logging

    from moebius.pipeline import MoebiusInpaintPipeline

    diffusers_logging.set_verbosity_error()  # its load-time advice is not for our users
    if model == AUTO:
        from moebius.weights import default_model

        model, why = default_model(variant)
        if why and note is not None:
            note(why)
    pipe = MoebiusInpaintPipeline.from_pretrained(
        model,
        variant=variant,
        model_config=model_config,
        device=runtime.device if runtime is not None else "cpu",
        dtype=runtime.dtype if runtime is not None else None,
    )
    pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
    return str(model), pipe
