"""``moebius export``: a pipeline's three networks as ONNX or OpenVINO IR, with a manifest.

The graphs are traced once into float32 ONNX (:mod:`moebius.export.graphs`); the requested
format, precision and weight compression are derived from those files
(:mod:`moebius.export.compress`). Before the directory appears, the exported denoiser is run
by its runtime at the export's working size against the PyTorch model and the difference is
recorded in the manifest (float32 exports that differ by more than float32 rounding are
refused). Everything is written into a temporary directory next to the target and renamed into
place at the end, so a directory that exists is complete.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moebius.errors import InputError, MoebiusError
from moebius.export.manifest import FORMAT, FORMATS, GRAPHS, MANIFEST_FILE, graph_bytes
from moebius.files import write_json

DTYPES = ("float32", "float16")
WEIGHTS = ("float", "int8", "int8-dynamic", "int8-static")
# Which weight compressions each format offers (see moebius.export.compress).
FORMAT_WEIGHTS = {
    "onnx": ("float", "int8", "int8-dynamic"),
    "openvino": ("float", "int8", "int8-static"),
}
# A float32 export must match PyTorch to float32 rounding: the largest |Δ| of one noise
# prediction at the working size, relative to the largest |ε|.
FLOAT32_TOLERANCE = 1e-4
RANDOM = "random:"  # load_for_export: an architecture with random weights
PACKAGES = ("moebius", "torch", "numpy", "diffusers", "onnx", "onnxruntime", "openvino", "nncf")


class ExportError(MoebiusError):
    """The exported graphs do not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class ExportOptions:
    format: str = "onnx"  # onnx or openvino
    dtype: str = "float32"  # the weights' storage precision
    weights: str = "float"  # float, or an 8-bit scheme (moebius.export.compress)
    size: tuple[int, int] | None = None  # (width, height) checked at export; default: trained

    def validate(self) -> "ExportOptions":
        if self.format not in FORMATS:
            raise InputError(f"unknown export format {self.format!r}; use onnx or openvino")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype must be {' or '.join(DTYPES)}, got {self.dtype!r}")
        if self.weights not in FORMAT_WEIGHTS[self.format]:
            allowed = ", ".join(FORMAT_WEIGHTS[self.format])
            raise InputError(f"{self.format} exports take --weights {allowed}, not {self.weights}")
        if self.weights != "float" and self.dtype != "float32":
            raise InputError("8-bit weights are made from float32 graphs; leave --dtype float32")
        return self

    def describe(self) -> str:
        return " ".join(
            [self.format, self.dtype] + ([self.weights] if self.weights != "float" else [])
        )


def _versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def source_files(where) -> list[Path]:
    """The weight files a located pipeline (:func:`moebius.weights.locate`) loads."""
    from moebius.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    if where.model_dir is not None:
        files = [where.model_dir / CONFIG_NAME, where.model_dir / WEIGHTS_NAME]
    else:
        files = [where.model_file]
    files += sorted(
        p for p in Path(where.vae_dir).iterdir() if p.suffix in (".json", ".safetensors", ".bin")
    )
    return [Path(f) for f in files if Path(f).is_file()]


def _check_size(size: tuple[int, int], multiple: int) -> None:
    if any(side <= 0 or side % multiple for side in size):
        raise InputError(
            f"size {size[0]}x{size[1]}: sides must be positive multiples of {multiple} pixels"
        )


def check_against_torch(pipe, directory: Path, size: tuple[int, int], threads) -> dict:
    """One guided-batch noise prediction (batch 2, timestep 500, both categories) at ``size``
    by the exported denoiser and by the PyTorch model: the largest differences."""
    import torch

    from moebius.export.manifest import CATEGORIES
    from moebius.export.runtime import ExportedInpaintPipeline
    from moebius.models import category_ids

    width, height = size
    factor = pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    channels = pipe.model.config.in_channels
    sample = torch.randn(2, channels, height // factor, width // factor, generator=generator)
    ids = torch.cat([category_ids(c, 1) for c in CATEGORIES])
    with torch.inference_mode():
        reference = pipe.model(sample, torch.tensor([500]), ids).sample.numpy()
    exported = ExportedInpaintPipeline.from_exported(directory, threads=threads)
    feeds = {
        "sample": sample.numpy(),
        "timestep": np.array([500], dtype=np.int64),
        "category": np.arange(len(CATEGORIES), dtype=np.int64),
    }
    (noise,) = exported.engine.run("denoiser", feeds)
    return {
        "size": [width, height],
        "runtime": exported.backend,
        "noise_max_abs_diff": float(np.abs(noise - reference).max()),
        "noise_max_abs": float(np.abs(reference).max()),
    }


def load_for_export(model: str, variant: str | None = None, model_config: str | None = None):
    """``model`` (anything :meth:`MoebiusInpaintPipeline.from_pretrained` loads, or
    ``random:PRESET``: that architecture with random weights and the SDXL VAE config, for
    timings) with its BatchNorms folded, and a record of its source: the SHA-256 of the files it
    was loaded from, by relative name."""
    from moebius.pipeline import MoebiusInpaintPipeline
    from moebius.weights import DEFAULT_VARIANT, locate

    if model.startswith(RANDOM):
        return _random_pipeline(model[len(RANDOM) :]), {"model": model, "sha256": {}}
    variant = variant or DEFAULT_VARIANT
    where = locate(model, variant, model_config)
    pipe = MoebiusInpaintPipeline.from_pretrained(
        model, variant=variant, model_config=model_config, fuse=True
    )
    files = source_files(where)
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    hashes = {str(f.relative_to(root)): _sha256(f) for f in files}
    return pipe, {"model": str(model), "sha256": hashes}


def _random_pipeline(preset: str):
    import torch
    from diffusers import AutoencoderKL

    import moebius
    from moebius.models.registry import SDXL_VAE_CONFIG
    from moebius.pipeline import MoebiusInpaintPipeline

    torch.manual_seed(0)
    model = moebius.build_model(preset).eval().fuse()
    vae = AutoencoderKL.from_config(json.loads(SDXL_VAE_CONFIG.read_text())).eval()
    return MoebiusInpaintPipeline(model, vae)


def export_pipeline(
    model: str,
    out: str | os.PathLike,
    options: ExportOptions,
    *,
    variant: str | None = None,
    model_config: str | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Export ``model`` (anything :meth:`MoebiusInpaintPipeline.from_pretrained` loads) into the
    directory ``out``; returns the manifest."""
    options.validate()
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; choose another directory or pass --overwrite")
    started = time.perf_counter()
    pipe, source = load_for_export(model, variant, model_config)
    load_s = time.perf_counter() - started
    log(f"loaded {model} in {load_s:.1f} s")
    (manifest,) = export_loaded(pipe, {out: options}, source, threads=threads, log=log)
    total_s = time.perf_counter() - started
    manifest["timings"].update(load_s=load_s, total_s=total_s)
    write_json(out / MANIFEST_FILE, manifest)  # the same size check: graphs are unchanged
    log(f"exported {model} to {out} in {total_s:.1f} s")
    return manifest


def export_loaded(
    pipe,
    targets: dict[Path, ExportOptions],
    source: dict,
    *,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Export a loaded, fused PyTorch pipeline once per target directory (existing ones are
    replaced), tracing it only once; returns the manifests."""
    from moebius.export.compress import derive, quantize_activations
    from moebius.export.graphs import graph_specs, to_onnx

    if pipe.model.config.model_type != "moebius":
        raise InputError(
            f"only the Moebius student exports; {source['model']} is a "
            f"{pipe.model.config.model_type}"
        )
    if not getattr(pipe.model, "fused", False):
        raise InputError("export a pipeline whose model is fused (model.eval().fuse())")
    for options in targets.values():
        options.validate()
        _check_size(options.size or (pipe.image_size,) * 2, pipe.pixel_multiple)
    first = Path(next(iter(targets))).expanduser()
    first.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{first.name}.", suffix=".tmp", dir=first.parent))
    manifests = []
    try:
        traced = work / "traced"
        traced.mkdir()
        started = time.perf_counter()
        for spec in graph_specs(
            pipe.model, pipe.vae, pipe.pixel_multiple, pipe.schedule.num_train_timesteps
        ):
            clock = time.perf_counter()
            to_onnx(spec, traced / f"{spec.name}.onnx")
            log(f"traced {spec.name} in {time.perf_counter() - clock:.1f} s")
        trace_s = time.perf_counter() - started
        for index, (out, options) in enumerate(targets.items()):
            final = work / f"export-{index}"
            final.mkdir()
            clock = time.perf_counter()
            files = derive(traced, final, options.format, options.dtype, options.weights)
            size = options.size or (pipe.image_size, pipe.image_size)
            manifest = _manifest(pipe, source, options, size, files)
            write_json(final / MANIFEST_FILE, manifest)
            if options.weights == "int8-static":  # calibrated on the float graph just written
                feeds = quantize_activations(
                    pipe, final, traced / "denoiser.simplified.onnx", threads
                )
                log(f"quantised the denoiser's weight products on {feeds} calibration feeds")
                manifest = _manifest(pipe, source, options, size, files)
                write_json(final / MANIFEST_FILE, manifest)
            convert_s = time.perf_counter() - clock
            log(f"wrote {options.describe()} graphs in {convert_s:.1f} s")
            clock = time.perf_counter()
            manifest["check"] = _check(pipe, final, options, size, threads, log)
            # seconds: tracing is shared by all targets of one call
            manifest["timings"] = {
                "trace_s": trace_s,
                "convert_s": convert_s,
                "check_s": time.perf_counter() - clock,
            }
            write_json(final / MANIFEST_FILE, manifest)
            out = Path(out).expanduser()
            out.parent.mkdir(parents=True, exist_ok=True)
            _replace(final, out)
            manifests.append(manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifests


def _check(pipe, directory: Path, options: ExportOptions, size, threads, log) -> dict:
    clock = time.perf_counter()
    check = check_against_torch(pipe, directory, size, threads)
    log(
        f"checked {options.describe()} against PyTorch at {size[0]}x{size[1]}: max |Δε| "
        f"{check['noise_max_abs_diff']:.2g} (max |ε| {check['noise_max_abs']:.2g}) in "
        f"{time.perf_counter() - clock:.1f} s"
    )
    exact = options.dtype == "float32" and options.weights == "float"
    if exact and check["noise_max_abs_diff"] > FLOAT32_TOLERANCE * check["noise_max_abs"]:
        raise ExportError(
            f"the exported denoiser differs from PyTorch by {check['noise_max_abs_diff']:.3g} "
            f"(max |ε| {check['noise_max_abs']:.3g}); please report this"
        )
    return check


def _manifest(pipe, source: dict, options: ExportOptions, size, files: dict[str, Path]) -> dict:
    config = pipe.vae.config
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export": {
            "format": options.format,
            "dtype": options.dtype,
            "weights": options.weights,
            "opset": _opset(),
        },
        "source": source,
        "sizes": {
            "image_size": pipe.image_size,
            "pixel_multiple": pipe.pixel_multiple,
            "vae_scale_factor": pipe.vae_scale_factor,
            "checked": list(size),
            "spatial": "any width and height that are multiples of pixel_multiple; batch any",
        },
        "vae": {"scaling_factor": config.scaling_factor, "latent_channels": config.latent_channels},
        "scheduler": pipe.schedule.to_config(),
        "settings": pipe.default_settings.to_dict(),
        "masked_image_fill": pipe.masked_image_fill.value,
        "graphs": {
            graph: {
                "file": files[graph].name,
                "bytes": graph_bytes(files[graph], options.format),
            }
            for graph in GRAPHS
        },
        "inputs": _graph_io(config.latent_channels, pipe.model.config.in_channels),
        "versions": _versions(),
    }


def _graph_io(latent: int, channels: int) -> dict:
    """What each graph takes and gives, for people who drive the graphs themselves."""
    return {
        "denoiser": {
            "sample": f"(B, {channels}, h, w) float32: the noisy latents ({latent} channels), the "
            f"latent mask (1 channel, 1 = hole) and the masked image's latents ({latent}), the "
            "latents scaled by the VAE scaling factor",
            "timestep": "(1,) or (B,) int64, 0 … num_train_timesteps − 1",
            "category": "(B,) int64: 0 background (fill with scene), 1 foreground (an object)",
            "noise": f"(B, {latent}, h, w) float32: the predicted noise",
        },
        "vae_encoder": {
            "pixels": "(B, 3, H, W) float32 in [-1, 1]",
            "mean, std": "the posterior's, unscaled: sample = (mean + std·N(0, 1)) × scaling",
        },
        "vae_decoder": {
            "latents": f"(B, {latent}, h, w) float32, unscaled (÷ the scaling factor)",
            "pixels": "(B, 3, H, W) float32, about [-1, 1]",
        },
    }


def _opset() -> int:
    from moebius.export.graphs import OPSET

    return OPSET


def _replace(source: Path, target: Path) -> None:
    """Rename ``source`` onto ``target``; an existing ``target`` is moved aside first and
    deleted after, so a reader never sees a half-written directory."""
    if not target.exists():
        os.replace(source, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)
