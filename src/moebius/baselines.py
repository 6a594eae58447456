"""Classical fills as inpainting pipelines: OpenCV's Telea (fast marching) and Navier–Stokes.

They need no weights and take milliseconds, so they serve as a baseline and as a preview while
a diffusion model runs (IOPaint offers them as its ``cv2`` model). :class:`OpenCVInpaintPipeline`
is called exactly like :class:`~moebius.pipeline.InpaintPipeline` and shares its whole
preparation and paste-back: the same working region (``strategy``, ``image_size``,
``crop_padding``), the same dilated hole (``dilation``), the same ``paste`` modes and empty-mask
warnings. Only the fill differs, so the settings that steer a diffusion model (steps, guidance,
strength, prefill, noise, seed, category, scheduler) have no effect, and the output reports one step.
"""

import contextlib
import time
from dataclasses import replace

import numpy as np

from moebius.compositing import OPENCV_FILLS, Region
from moebius.errors import InputError
from moebius.pipeline import InpaintPipeline
from moebius.sampling import Cancelled, Step
from moebius.settings import InpaintSettings, Prefill

METHODS = tuple(method.value for method in OPENCV_FILLS)
# the model names under which the CLI and the service offer them
BASELINES = {f"opencv-{method}": method for method in METHODS}
# the settings that change a classical fill's result
SETTINGS_USED = ("strategy", "image_size", "crop_padding", "dilation", "paste", "resize_mask")
# the official Moebius model's working size: the fills work on the same region it would
WORKING_SIZE = 512


class OpenCVInpaintPipeline(InpaintPipeline):
    """``OpenCVInpaintPipeline("telea")`` or ``("ns")``: :func:`cv2.inpaint` as a pipeline."""

    def __init__(self, method: str = "telea", image_size: int = WORKING_SIZE):
        if method not in METHODS:
            raise InputError(f"unknown OpenCV fill {method!r} (use {', '.join(METHODS)})")
        self.method = method
        self._image_size = image_size
        self._progress_config = {"disable": True}

    @property
    def name(self) -> str:
        return f"opencv-{self.method}"

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def pixel_multiple(self) -> int:
        return 1  # no network: any working size will do

    def settings_for(self, settings: InpaintSettings | None = None, **overrides) -> InpaintSettings:
        # one fill pass, so progress reads "1 of 1" and the output says what ran
        return replace(super().settings_for(settings, **overrides), steps=1, strength=1.0)

    def _inference(self):
        return contextlib.nullcontext()

    def _generators(self, generator, seed: int, count: int):
        return None  # deterministic: nothing to draw

    def _inpaint_batch(
        self, regions: list[Region], settings, generators, on_step, cancelled, timings=None
    ):
        if cancelled is not None and cancelled():
            raise Cancelled("cancelled before the fill")
        clock = time.perf_counter()
        filled = np.stack([region.opencv_fill(Prefill(self.method)) for region in regions])
        if timings is not None:
            timings["fill"] = timings.get("fill", 0.0) + time.perf_counter() - clock
        if on_step is not None:
            on_step(Step(0, 1, 0, None))
        return filled


def is_baseline(name: str) -> bool:
    return name in BASELINES


def baseline_pipeline(name: str, image_size: int = WORKING_SIZE) -> OpenCVInpaintPipeline:
    """The pipeline for a model name of :data:`BASELINES` (``opencv-telea``, ``opencv-ns``)."""
    return OpenCVInpaintPipeline(BASELINES[name], image_size)
