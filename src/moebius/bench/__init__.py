"""``moebius bench``: side-by-side speed of the student, the teacher and an SD-1.5
inpainting baseline, with FLOPs, memory, scaling exponents and the matmul roofline."""

from moebius.bench.flops import measured_flops, student_flops
from moebius.bench.report import fit_exponent, markdown, plot, ratios, scaling
from moebius.bench.runner import SCHEMA, Benchmark, BenchSettings

__all__ = [
    "SCHEMA",
    "BenchSettings",
    "Benchmark",
    "fit_exponent",
    "markdown",
    "measured_flops",
    "plot",
    "ratios",
    "scaling",
    "student_flops",
]
