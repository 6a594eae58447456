"""Exported runtimes in the benchmark: the student is exported once per graph format and weight
scheme (:mod:`moebius.export`) into a temporary directory, and every (runtime, weights, compute
precision) becomes a subject timed side by side with the PyTorch ones."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moebius.bench.subjects import Subject

RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class EdgeVariant:
    backend: str  # onnxruntime or openvino
    weights: str  # float, int8 or int8-dynamic (moebius.export.compress)
    precision: str = "float32"  # the runtime's compute precision

    @property
    def label(self) -> str:
        """e.g. ``openvino bfloat16`` or ``onnxruntime float32, int8 weights``."""
        weights = {"float": "", "int8": ", int8 weights", "int8-dynamic": ", int8 dynamic"}
        return f"{self.backend} {self.precision}{weights[self.weights]}"

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
)


def edge_variants(backends: list[str], precisions: list[str]) -> list[EdgeVariant]:
    """The variants of ``backends`` whose compute precision is among ``precisions``."""
    return [v for v in VARIANTS if v.backend in backends and v.precision in precisions]


def export_variants(
    pipe,
    variants: list[EdgeVariant],
    workdir: Path,
    threads: int | None,
    log: Callable[[str], None],
) -> dict[EdgeVariant, object]:
    """A fused PyTorch pipeline exported once per format and weight scheme under ``workdir``
    (traced once), each variant loaded by its runtime: variant → ExportedInpaintPipeline."""
    from moebius.export.exporter import ExportOptions, export_loaded
    from moebius.export.runtime import ExportedInpaintPipeline

    def directory(variant: EdgeVariant) -> Path:
        return workdir / f"{variant.format}-{variant.weights}"

    targets = {directory(v): ExportOptions(v.format, weights=v.weights) for v in variants}
    source = {"model": "the benchmarked weights", "sha256": {}}
    export_loaded(pipe, targets, source, threads=threads, log=log)
    loaded = {}
    for variant in variants:
        runtime = ExportedInpaintPipeline.from_exported(
            directory(variant), variant.backend, threads=threads, dtype=variant.precision
        )
        runtime.set_progress_bar_config(disable=True)
        loaded[variant] = runtime
    return loaded


def edge_subjects(
    student: Subject,
    vae,
    variants: list[EdgeVariant],
    workdir: Path,
    threads: int | None,
    log: Callable[[str], None],
) -> list[Subject]:
    """``student`` (a fused PyTorch subject) with ``vae``, exported and loaded per variant."""
    from moebius.pipeline import MoebiusInpaintPipeline

    pipe = MoebiusInpaintPipeline(student.model(), vae)
    runtimes = export_variants(pipe, variants, workdir, threads, log)
    return [
        Subject(
            student.name,
            variant.label,
            None,
            student.params,
            "edge",
            runtime=runtime,
            precision=variant.precision,
            exports=student,
        )
        for variant, runtime in runtimes.items()
    ]
