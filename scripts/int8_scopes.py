"""Which operators get 8-bit activations in ``moebius export openvino --weights int8-static``.

Exports MODEL once as float32 ONNX and OpenVINO, then quantises the OpenVINO denoiser once
per scope of ``moebius.export.compress.INT8_SCOPES`` (``--scopes``: the operators that get
8-bit activations), each calibrated as the export calibrates. For each scope
and OpenVINO precision it times one batch-2 denoising step at the trained size (median of
``--repeats`` after one warm-up; the float32 export's steps beside it) and measures a 20-step
inpainting against float32 PyTorch's (``moebius.export.quality``). Writes OUT/scopes.json.

    python scripts/int8_scopes.py --model random:moebius-0.2b --threads 2 --out runs/int8-scopes

The measurements quoted in docs/edge.md and at ``INT8_SCOPES`` come from this script.
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moebius.export.compress import INT8_SCOPES, quantize_activations
from moebius.export.exporter import ExportOptions, export_loaded, load_for_export
from moebius.export.manifest import MANIFEST_FILE, graph_bytes
from moebius.export.quality import trajectory_quality
from moebius.export.runtime import ExportedInpaintPipeline
from moebius.files import write_json

PRECISIONS = ("float32", "bfloat16")


def step_seconds(pipe: ExportedInpaintPipeline, feeds: dict, repeats: int) -> float:
    pipe.engine.run("denoiser", feeds)  # OpenVINO compiles for the shape here
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        pipe.engine.run("denoiser", feeds)
        times.append(time.perf_counter() - clock)
    return statistics.median(times)


def record_denoiser_bytes(directory: Path) -> None:
    """The quantised denoiser replaced the float one: the manifest's byte counts follow."""
    path = directory / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["graphs"]["denoiser"]["bytes"] = graph_bytes(directory / "denoiser.xml", "openvino")
    write_json(path, manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:moebius-0.2b", help="as moebius export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scopes", default=",".join(INT8_SCOPES), help="comma-separated")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference, _ = load_for_export(args.model)
    reference.set_progress_bar_config(disable=True)
    side = reference.image_size // reference.vae_scale_factor
    channels = reference.model.config.in_channels
    sample = np.random.default_rng(0).standard_normal((2, channels, side, side), np.float32)
    feeds = {"sample": sample, "timestep": np.array([500]), "category": np.array([1, 0])}
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-scopes-") as work:
        work = Path(work)
        targets = {work / fmt: ExportOptions(fmt) for fmt in ("onnx", "openvino")}
        export_loaded(reference, targets, {"model": args.model, "sha256": {}}, log=print)
        source = work / "onnx" / "denoiser.onnx"  # the float32 graph OpenVINO was made from
        for scope in ("float", *args.scopes.split(",")):
            directory = work / "openvino"
            if scope != "float":
                directory = work / scope
                shutil.copytree(work / "openvino", directory)
                quantize_activations(reference, directory, source, args.threads, scope)
                record_denoiser_bytes(directory)
            for precision in PRECISIONS:
                pipe = ExportedInpaintPipeline.from_exported(
                    directory, threads=args.threads, dtype=precision
                )
                seconds = step_seconds(pipe, feeds, args.repeats)
                quality = trajectory_quality(reference, {scope: pipe})["rows"][1]
                pipe.engine.release()
                rows.append(
                    {
                        "scope": scope,
                        "precision": precision,
                        "step_s": seconds,
                        "psnr_db": quality["psnr_db"],
                        "latent_mean_abs": quality["latent_mean_abs"],
                    }
                )
                print(
                    f"{scope:16s} {precision:9s} {seconds * 1000:6.0f} ms / batch-2 step   "
                    f"{quality['psnr_db']:.1f} dB from float32 PyTorch",
                    flush=True,
                )
    write_json(
        args.out / "scopes.json",
        {"model": args.model, "size": reference.image_size, "threads": args.threads, "rows": rows},
    )


if __name__ == "__main__":
    main()
