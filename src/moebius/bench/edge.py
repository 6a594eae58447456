"""Exported runtimes in the benchmark: the student is exported once per graph format and weight
scheme (:mod:`moebius.export`) into a temporary directory, and every (runtime, weights, compute
precision) becomes a subject timed side by side with the PyTorch ones."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moebius.bench.subjects import Subject

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class EdgeVariant:
    backend: str  # onnxruntime or openvino
    weights: str  # float, int8, int8-dynamic or int8-static (moebius.export.compress)
    precision: str = "float32"  # the runtime's compute precision

    @property
    def label(self) -> str:
        """e.g. ``openvino bfloat16`` or ``onnxruntime float32, int8 weights``."""
        weights = {
            "float": "",
            "int8": ", int8 weights",
            "int8-dynamic": ", int8 dynamic",
            "int8-static": ", int8 products",
        }
        return f"{self.backend} {self.precision}{weights[self.weights]}"

    @property
    def integer_products(self) -> bool:
        """Its matrix products run in 8-bit integers: no float roofline bounds them."""
        return self.weights in ("int8-dynamic", "int8-static")

    @property
    def format(self) -> str:
        return "onnx" if self.backend == "onnxruntime" else "openvino"


VARIANTS = (
    EdgeVariant("onnxruntime", "float"),
    EdgeVariant("onnxruntime", "int8"),
    EdgeVariant("onnxruntime", "int8-dynamic"),
    EdgeVariant("openvino", "float"),
    EdgeVariant("openvino", "float", "bfloat16"),
    EdgeVariant("openvino", "int8"),
    EdgeVariant("openvino", "int8", "bfloat16"),
    EdgeVariant("openvino", "int8-static"),
    EdgeVariant("openvino", "int8-static", "bfloat16"),
)


def edge_variants(
    backends: list[str], precisions: list[str], weights: list[str] | None = None
) -> list[EdgeVariant]:
    """The variants of ``backends`` whose compute precision is among ``precisions`` (and
    weight scheme among ``weights``, default any)."""
    return [
        v
        for v in VARIANTS
        if v.backend in backends
        and v.precision in precisions
        and (weights is None or v.weights in weights)
    ]


@dataclass
class LoadedVariant:
    runtime: object  # ExportedInpaintPipeline
    export_s: float  # tracing (shared by the variants of one call) + conversion + check
    load_s: float  # ExportedInpaintPipeline.from_exported
    first_step_s: float  # the first batch-2 step at the trained size (OpenVINO compiles it)


def export_variants(
    pipe,
    variants: list[EdgeVariant],
    workdir: Path,
    threads: int | None,
    log: Callable[[str], None],
) -> dict[EdgeVariant, LoadedVariant]:
    """A fused PyTorch pipeline exported once per format and weight scheme under ``workdir``
    (traced once), each variant loaded by its runtime and run once."""
    import numpy as np

    from moebius.export.exporter import ExportOptions, export_loaded
    from moebius.export.runtime import ExportedInpaintPipeline

    def directory(variant: EdgeVariant) -> Path:
        return workdir / f"{variant.format}-{variant.weights}"

    targets = {directory(v): ExportOptions(v.format, weights=v.weights) for v in variants}
    source = {"model": "the benchmarked weights", "sha256": {}}
    manifests = export_loaded(pipe, targets, source, threads=threads, log=log)
    export_s = {
        path: sum(m["timings"].values()) for path, m in zip(targets, manifests, strict=True)
    }
    side = pipe.image_size // pipe.vae_scale_factor
    sample = np.random.default_rng(0).standard_normal((2, 9, side, side), dtype=np.float32)
    feeds = {"sample": sample, "timestep": np.array([500]), "category": np.array([1, 0])}
    loaded = {}
    for variant in variants:
        clock = time.perf_counter()
        runtime = ExportedInpaintPipeline.from_exported(
            directory(variant), variant.backend, threads=threads, dtype=variant.precision
        )
        load_s = time.perf_counter() - clock
        runtime.set_progress_bar_config(disable=True)
        clock = time.perf_counter()
        runtime.engine.run("denoiser", feeds)
        first = time.perf_counter() - clock
        loaded[variant] = LoadedVariant(runtime, export_s[directory(variant)], load_s, first)
        log(f"loaded {variant.label} in {load_s:.1f} s, first step {first:.1f} s")
    return loaded


def edge_subjects(
    student: Subject,
    vae,
    variants: list[EdgeVariant],
    workdir: Path,
    threads: int | None,
    log: Callable[[str], None],
) -> tuple[list[Subject], list[dict]]:
    """``student`` (a fused PyTorch subject) with ``vae``, exported and loaded per variant; and
    per variant the seconds its export, load and first step took."""
    from moebius.pipeline import MoebiusInpaintPipeline

    pipe = MoebiusInpaintPipeline(student.model(), vae)
    loaded = export_variants(pipe, variants, workdir, threads, log)
    subjects = [
        Subject(
            student.name,
            variant.label,
            None,
            student.params,
            "edge",
            runtime=item.runtime,
            precision=variant.precision,
            exports=student,
            integer_products=variant.integer_products,
        )
        for variant, item in loaded.items()
    ]
    timings = [
        {
            "variant": variant.label,
            "export_s": item.export_s,
            "load_s": item.load_s,
            "first_step_s": item.first_step_s,
        }
        for variant, item in loaded.items()
    ]
    return subjects, timings
