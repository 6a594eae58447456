"""How far reduced-precision and exported pipelines drift from float32 PyTorch, and the report
command: ``python -m moebius.export.quality --model MODEL --out DIR``.

Every pipeline denoises the same start: the reference's (float32 PyTorch) encoding of one
photo's masked image, the same hole and the same initial noise, with the same DDIM steps and
classifier-free guidance (a guided step runs the model on batch 2). The latents are compared
after every step, the decoded images by PSNR against the reference's.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from moebius.compositing import prepare
from moebius.export.runtime import ExportedInpaintPipeline
from moebius.sampling import denoise, make_sampler
from moebius.settings import InpaintSettings, Prefill, SchedulerKind

SCHEMA = "moebius-edge-quality/1"


def test_photo(size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """A deterministic synthetic photo (smooth colour gradients, a disc and bars) and a box
    hole over a third of it: no data files needed."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.6 - 0.3 * x * y], -1)
    image[(x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.02] = (0.9, 0.8, 0.2)
    image[((x * 20).astype(int) % 4 == 0) & (y < 0.3)] *= 0.4
    mask = np.zeros((height, width), np.uint8)
    mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 255
    return Image.fromarray((image * 255).astype(np.uint8)), Image.fromarray(mask)


def _numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def _trajectory(pipe, start: dict[str, np.ndarray], settings: InpaintSettings):
    """(latents after every step, decoded uint8 image) of ``pipe`` from ``start``."""
    sampler = make_sampler(SchedulerKind.DDIM, pipe.schedule, settings.steps)
    steps = []
    with pipe._inference():
        predict = pipe._noise_predictor(
            pipe._array(start["latent_mask"]),
            pipe._array(start["masked_latents"]),
            settings.category,
            settings.guidance,
        )
        final = denoise(
            predict,
            sampler,
            pipe._array(start["noise"]),
            on_step=lambda step: steps.append(_numpy(step.latents)),
        )
        image = pipe._decode(final)
    return steps, image


def trajectory_start(reference, size: tuple[int, int], settings: InpaintSettings) -> dict:
    """The inputs of one inpainting of :func:`test_photo` at ``size`` (width, height), encoded
    by ``reference`` (the PyTorch pipeline), with fixed noise: latent mask, masked latents,
    starting noise, as NumPy arrays any backend takes."""
    import torch

    region = prepare(*test_photo(size), settings, min(size), reference.pixel_multiple)
    pixels, holes = region.model_inputs()
    masked = reference._masked_images([region], pixels, holes, Prefill.NONE)
    with reference._inference():
        masked = reference._encode(masked, [torch.Generator().manual_seed(0)])
    factor = reference.vae_scale_factor
    masked = _numpy(masked)
    return {
        "latent_mask": np.ascontiguousarray(holes[:, :, ::factor, ::factor]),
        "masked_latents": masked,
        "noise": np.random.default_rng(0).standard_normal(masked.shape, dtype=np.float32),
    }


def denoiser_inputs(
    pipe: ExportedInpaintPipeline, start: dict[str, np.ndarray], settings: InpaintSettings
) -> list[dict[str, np.ndarray]]:
    """What ``pipe``'s denoiser graph is fed along one trajectory from ``start``: one feed
    dictionary per step (both guidance branches in one batch)."""
    feeds = []
    run = pipe.engine.run

    def recording(graph: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if graph == "denoiser":
            feeds.append({name: value.copy() for name, value in inputs.items()})
        return run(graph, inputs)

    pipe.engine.run = recording
    try:
        _trajectory(pipe, start, settings)
    finally:
        del pipe.engine.run  # the class's method again
    return feeds


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def trajectory_quality(
    reference, candidates: dict, size: tuple[int, int] = (512, 512), steps: int = 20
) -> dict:
    """``candidates`` (label → pipeline of any backend) against ``reference`` (the float32
    PyTorch pipeline) on one inpainting at ``size`` (width, height)."""
    settings = InpaintSettings(steps=steps, seed=0)
    start = trajectory_start(reference, size, settings)
    clock = time.perf_counter()
    expected_steps, expected = _trajectory(reference, start, settings)
    rows = [{"label": "reference", "seconds": time.perf_counter() - clock}]
    for label, pipe in candidates.items():
        clock = time.perf_counter()
        got_steps, got = _trajectory(pipe, start, settings)
        if isinstance(pipe, ExportedInpaintPipeline):
            pipe.engine.release()  # the compiled graphs of every candidate outgrew 24 GiB
        errors = [np.abs(g - e) for g, e in zip(got_steps, expected_steps, strict=True)]
        rows.append(
            {
                "label": label,
                "seconds": time.perf_counter() - clock,
                "latent_mean_abs_by_step": [float(e.mean()) for e in errors],
                "latent_mean_abs": float(errors[-1].mean()),
                "latent_max_abs": float(errors[-1].max()),
                "psnr_db": psnr(got, expected),
                "image_max_abs": int(np.abs(got.astype(int) - expected).max()),
            }
        )
    return {
        "size": list(size),
        "steps": steps,
        "guidance": settings.guidance,
        "latent_ref_mean_abs": float(np.abs(expected_steps[-1]).mean()),
        "rows": rows,
    }


def markdown(report: dict, title: str) -> str:
    width, height = report["size"]
    lines = [
        f"# {title}",
        "",
        f"{report['steps']}-step DDIM inpainting at {width}x{height} (guidance "
        f"{report['guidance']}, so every step runs batch 2) from the same start as float32 "
        f"PyTorch; mean |z| of its final latent: {report['latent_ref_mean_abs']:.3g}.",
        "",
        "| pipeline | final latent mean abs err | max abs err | image PSNR dB | max pixel err |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"][1:]:
        lines.append(
            f"| {row['label']} | {row['latent_mean_abs']:.3g} | {row['latent_max_abs']:.3g} "
            f"| {row['psnr_db']:.1f} | {row['image_max_abs']} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- the command
def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moebius.export.quality",
        description="Export MODEL in every edge variant and compare 20-step inpaintings with "
        "float32 PyTorch: latent error along the trajectory and PSNR of the decoded image. "
        "Writes quality.json and quality.md to --out.",
    )
    parser.add_argument(
        "--model",
        default="moebius-demo",
        help="any model moebius export takes; random:moebius-0.2b = random weights with the "
        "SDXL VAE config",
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", type=int, help="square side in pixels (default: the model's)")
    parser.add_argument("--steps", type=int, default=InpaintSettings().steps)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--backends", default="onnxruntime,openvino", help="exported runtimes to compare"
    )
    parser.add_argument(
        "--weights",
        default="float,int8,int8-dynamic,int8-static",
        help="weight schemes to compare (moebius export --weights)",
    )
    args = parser.parse_args(argv)

    import copy
    import tempfile

    import torch

    from moebius.bench.edge import edge_variants, export_variants
    from moebius.export.exporter import load_for_export
    from moebius.files import write_json, write_text
    from moebius.pipeline import MoebiusInpaintPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    reference, source = load_for_export(args.model)
    reference.set_progress_bar_config(disable=True)
    size = (args.size or reference.image_size,) * 2
    # its own schedule: a v-prediction model read as ε-prediction paints noise
    low = MoebiusInpaintPipeline(
        copy.deepcopy(reference.model), copy.deepcopy(reference.vae), reference.schedule
    )
    candidates = {"torch bfloat16": low.to(dtype=torch.bfloat16)}
    with tempfile.TemporaryDirectory(prefix="moebius-quality-") as workdir:
        variants = edge_variants(
            args.backends.split(","), ["float32", "bfloat16"], args.weights.split(",")
        )
        runtimes = export_variants(reference, variants, Path(workdir), args.threads, _log)
        candidates.update({variant.label: item.runtime for variant, item in runtimes.items()})
        report = trajectory_quality(reference, candidates, size, args.steps)
    report.update(schema=SCHEMA, model=source["model"], source=source)
    write_json(args.out / "quality.json", report)
    write_text(args.out / "quality.md", markdown(report, f"Edge quality: {source['model']}"))
    print(markdown(report, f"Edge quality: {source['model']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
