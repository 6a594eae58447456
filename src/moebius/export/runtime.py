"""The inpainting pipeline on exported graphs: NumPy and ONNX Runtime or OpenVINO, no PyTorch.

:class:`ExportedInpaintPipeline` implements the backend hooks of
:class:`~moebius.pipeline.InpaintPipeline`, so the same preparation, sampler
(:mod:`moebius.sampling` on NumPy arrays), classifier-free guidance and paste-back drive the
exported denoiser as drive the PyTorch model. Noise comes from NumPy generators
(``numpy.random.default_rng(seed)``, one per image): a seed gives other images than on the
PyTorch backend, whose generators are PyTorch's; given the same noise the two give the same
images (see ``generator`` in :meth:`~moebius.pipeline.InpaintPipeline.__call__`: any object
with NumPy's ``standard_normal(size, dtype)`` is accepted).
"""

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moebius.errors import CheckpointError, InputError
from moebius.export.manifest import (
    GRAPHS,
    MANIFEST_FILE,
    ExportManifest,
    category_index,
    read_manifest,
)
from moebius.pipeline import InpaintPipeline
from moebius.sampling import NoiseSchedule, guided
from moebius.settings import Category, InpaintSettings, parse_masked_image_fill

RUNTIMES = ("onnxruntime", "openvino")
# the compute precisions a runtime offers on the CPU, by --dtype name
PRECISIONS = {"onnxruntime": {"float32": None}, "openvino": {"float32": "f32", "bfloat16": "bf16"}}


class OnnxRuntimeEngine:
    """One ONNX Runtime CPU session per graph."""

    name = "onnxruntime"

    def __init__(self, manifest: ExportManifest, threads: int | None, precision: str):
        import onnxruntime as ort

        if manifest.format != "onnx":
            raise InputError(
                f"{manifest.directory} holds an OpenVINO export; run it with the openvino "
                "backend, or export ONNX for onnxruntime"
            )
        self.sessions = {
            graph: ort.InferenceSession(
                str(manifest.graph_file(graph)),
                self._options(ort, threads, arena=graph == "denoiser"),
                providers=["CPUExecutionProvider"],
            )
            for graph in GRAPHS
        }

    @staticmethod
    def _options(ort, threads: int | None, arena: bool):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings about unused initialisers are noise
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # An arena keeps its largest run's memory for the session's life. The denoiser runs
        # every step and keeps one; the VAE graphs run once per image on full-resolution maps,
        # and with arenas those of three loaded exports of the full-size student ran a 24 GiB
        # machine out of memory (its bench at 512 px).
        options.enable_cpu_mem_arena = arena
        return options

    def inputs(self, graph: str) -> dict[str, list]:
        return {i.name: list(i.shape) for i in self.sessions[graph].get_inputs()}

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, feeds)

    def release(self) -> None:
        """Nothing to drop: a session serves every shape with the memory it already holds."""


class OpenVinoEngine:
    """OpenVINO on the CPU; reads IR (``.xml``) and ONNX exports alike. Each graph is compiled
    for the input shapes it is called with (a static graph compiles and runs faster than the
    dynamic one), on first use, and kept for the next calls."""

    name = "openvino"
    shapes_kept = 4  # compiled shapes kept per graph

    def __init__(self, manifest: ExportManifest, threads: int | None, precision: str):
        import openvino as ov

        self.core = ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.models = {g: self.core.read_model(str(manifest.graph_file(g))) for g in GRAPHS}
        self.compiled: dict[str, dict[tuple, Any]] = {g: {} for g in GRAPHS}

    def inputs(self, graph: str) -> dict[str, list]:
        return {
            port.get_any_name(): [
                d.get_length() if d.is_static else None for d in port.partial_shape
            ]
            for port in self.models[graph].inputs
        }

    def _request(self, graph: str, feeds: dict[str, np.ndarray]):
        shapes = tuple(sorted((name, array.shape) for name, array in feeds.items()))
        kept = self.compiled[graph]
        if shapes not in kept:
            model = self.models[graph].clone()
            model.reshape({name: list(shape) for name, shape in shapes})
            if len(kept) >= self.shapes_kept:
                kept.pop(next(iter(kept)))
            kept[shapes] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        return kept[shapes]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = self._request(graph, feeds)
        results = request.infer(feeds)
        return [results[port] for port in request.model_outputs]

    def release(self) -> None:
        """Drop every compiled shape and the memory its buffers hold (a 512 px VAE decoder
        holds about a gigabyte); the next call compiles again."""
        for kept in self.compiled.values():
            kept.clear()


ENGINES = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}


class ExportedInpaintPipeline(InpaintPipeline):
    """:class:`~moebius.pipeline.InpaintPipeline` on an export directory (``moebius export``),
    run by ONNX Runtime or OpenVINO."""

    def __init__(self, manifest: ExportManifest, engine):
        self.manifest = manifest
        self.engine = engine
        self.schedule = NoiseSchedule.from_config(manifest.scheduler)
        try:
            self.default_settings = InpaintSettings.from_mapping(manifest.settings)
            self.masked_image_fill = parse_masked_image_fill(manifest.masked_image_fill)
        except InputError as exc:
            raise CheckpointError(f"{manifest.directory}: manifest settings: {exc}") from None
        self.vae_scale_factor = manifest.vae_scale_factor
        self._progress_config = {}
        self._check_graphs()

    @classmethod
    def from_exported(
        cls,
        directory: str | os.PathLike,
        backend: str | None = None,
        threads: int | None = None,
        dtype: str = "float32",
    ) -> "ExportedInpaintPipeline":
        """Load ``directory`` for ``backend`` (``onnxruntime`` or ``openvino``; default: the
        one its format is made for). ``dtype``: the compute precision, ``float32``, or
        ``bfloat16`` with OpenVINO on CPUs that have it. ``threads``: the runtime's CPU
        threads (default: its own choice)."""
        manifest = read_manifest(directory)
        backend = backend or ("onnxruntime" if manifest.format == "onnx" else "openvino")
        if backend not in ENGINES:
            raise InputError(f"unknown backend {backend!r}; use {' or '.join(RUNTIMES)}")
        precision = PRECISIONS[backend].get("float32" if dtype == "auto" else dtype, False)
        if precision is False:
            raise InputError(
                f"{backend} runs {' or '.join(PRECISIONS[backend])} on the CPU, not {dtype}"
            )
        if threads is not None and threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        return cls(manifest, ENGINES[backend](manifest, threads, precision))

    def _check_graphs(self) -> None:
        """The graphs must be the ones the manifest describes: a denoiser taking the VAE's
        latents (and mask, and masked latents) and the inputs the runtime feeds."""
        expected = {
            "denoiser": {"sample", "timestep", "category"},
            "vae_encoder": {"pixels"},
            "vae_decoder": {"latents"},
        }
        for graph, names in expected.items():
            found = self.engine.inputs(graph)
            if set(found) != names:
                raise InputError(
                    f"{self.manifest.directory}: {graph} takes {sorted(found)}, not "
                    f"{sorted(names)}; export the model again with this version"
                )
        channels = self.engine.inputs("denoiser")["sample"][1]
        latent = self.manifest.latent_channels
        if channels != 2 * latent + 1:
            raise InputError(
                f"{self.manifest.directory}: the denoiser takes {channels} channels but the VAE "
                f"makes {latent}-channel latents (the graphs come from different models)"
            )

    # ------------------------------------------------------------------ what the core asks
    @property
    def backend(self) -> str:
        return self.engine.name

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def pixel_multiple(self) -> int:
        return self.manifest.pixel_multiple

    def _inference(self):
        return contextlib.nullcontext()

    def _generators(self, generator, seed: int, count: int):
        if generator is None:
            return [np.random.default_rng(seed) for _ in range(count)]
        if isinstance(generator, (list, tuple)):
            if len(generator) != count:
                raise InputError(f"{len(generator)} generators or seeds for {count} images")
            return [_numpy_generator(g) for g in generator]
        return _numpy_generator(generator)

    def _randn(self, shape: tuple[int, ...], generators) -> np.ndarray:
        if isinstance(generators, list):
            rows = [g.standard_normal((1, *shape[1:]), dtype=np.float32) for g in generators]
            return np.concatenate(rows)
        return generators.standard_normal(shape, dtype=np.float32)

    def _array(self, values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=np.float32)

    def _encode(self, pixels: np.ndarray, generators, dropped_draws: int = 0) -> np.ndarray:
        mean, std = self.engine.run("vae_encoder", {"pixels": self._array(pixels)})
        for _ in range(dropped_draws):
            self._randn(mean.shape, generators)
        sample = mean + std * self._randn(mean.shape, generators)
        return sample * np.float32(self.manifest.scaling_factor)

    def _noise_predictor(
        self, latent_mask, masked_latents, category: Category, guidance: float
    ) -> Callable[[Any, int], Any]:
        batch = masked_latents.shape[0]
        cfg = guidance != 1
        copies = 2 if cfg else 1
        # the unconditional branch is the other category, and it goes first
        order = [Category(category).other, category] if cfg else [category]
        ids = np.repeat(np.array([category_index(c) for c in order], dtype=np.int64), batch)
        condition = np.tile(
            np.concatenate([latent_mask, masked_latents], axis=1), (copies, 1, 1, 1)
        )

        def predict(latents: np.ndarray, t: int) -> np.ndarray:
            sample = np.concatenate([np.tile(latents, (copies, 1, 1, 1)), condition], axis=1)
            feeds = {
                "sample": self._array(sample),
                "timestep": np.array([t], dtype=np.int64),
                "category": ids,
            }
            (eps,) = self.engine.run("denoiser", feeds)
            return guided(eps, guidance) if cfg else eps

        return predict

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        scaled = latents / np.float32(self.manifest.scaling_factor)
        (pixels,) = self.engine.run("vae_decoder", {"latents": self._array(scaled)})
        pixels = (pixels + 1) / 2
        return (np.clip(pixels, 0, 1) * 255).transpose(0, 2, 3, 1).astype(np.uint8)


def _numpy_generator(generator):
    """An int seed → ``numpy.random.default_rng``; anything with ``standard_normal`` as is."""
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    if not hasattr(generator, "standard_normal"):
        raise InputError(
            f"the exported pipeline draws noise with NumPy: pass seeds or numpy.random.Generator "
            f"objects, not {type(generator).__name__}"
        )
    return generator


def exported_directory(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with an export manifest."""
    return (Path(path).expanduser() / MANIFEST_FILE).is_file()
