"""Write README's edge-deployment numbers from the runs kept in docs/bench/.

    python scripts/update_readme_edge.py           # rewrite the section in README.md
    python scripts/update_readme_edge.py --check   # exit 1 if README.md is out of date

The text between the two ``edge:`` markers comes from: the side-by-side bench of PyTorch and
the exported runtimes (docs/bench/edge-512/bench.json), the quality report on the bundled demo
model (docs/bench/edge-quality-demo/quality.json) and the manifest of a full-size export
(docs/bench/edge-export/manifest.json), so README numbers cannot drift from what the commands
wrote.
"""

import argparse
import json
import sys
from pathlib import Path

from readme_sections import README, with_section, write_or_check

from moebius.cpu import describe_cpu

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).name
BENCH = ROOT / "docs" / "bench" / "edge-512"
DEMO = ROOT / "docs" / "bench" / "edge-quality-demo"
EXPORT = ROOT / "docs" / "bench" / "edge-export"
STUDENT = "moebius-0.2b"
PSNR_BAR = 40.0  # dB against float32 PyTorch: what counts as the same image


def _row(report: dict, label: str, dtype: str) -> dict | None:
    for r in report["results"]:
        if r["label"] == label and r["dtype"] == dtype and r.get("status") == "ok":
            return r
    return None


def _pipeline(report: dict, label: str, dtype: str) -> dict | None:
    return next(
        (p for p in report["pipeline"] if p["label"] == label and p["dtype"] == dtype), None
    )


def _configs(report: dict) -> list[tuple[str, str, str, str]]:
    """(name shown, bench label, dtype, quality label) for PyTorch and every exported variant."""
    rows = [(f"PyTorch {d}", STUDENT, d, f"torch {d}") for d in report["settings"]["dtypes"]]
    for r in report["results"]:
        if r["role"] == "edge" and r["size"] == [512, 512]:
            rows.append((r["variant"], r["label"], r["dtype"], r["variant"]))
    return rows


def render(bench: dict, demo: dict, export: dict) -> str:
    machine = bench["machine"]
    quality = {row["label"]: row for row in bench["edge_quality"]["rows"]}
    demo_quality = {row["label"]: row for row in demo["rows"]}
    reference = _row(bench, STUDENT, "float32")["latency"]["median_ms"]
    fastest = min(
        _row(bench, STUDENT, d)["latency"]["median_ms"] for d in bench["settings"]["dtypes"]
    )
    steps = bench["settings"]["steps"]
    lines = [
        f"Measured on a VM ({describe_cpu(machine)}) with {machine['threads']} threads, on "
        f"{bench['created'][:10]} (torch {machine['torch']}, onnxruntime "
        f"{export['versions']['onnxruntime']}, openvino {export['versions']['openvino']}), by:",
        "",
        "```bash",
        "moebius bench --models moebius-0.2b --sizes 512 --batches 2 --dtypes "
        f"{','.join(bench['settings']['dtypes'])} --backends "
        f"{','.join(bench['settings']['backends'])} --threads {machine['threads']} "
        f"--pipeline-sizes 512 --steps {steps} --no-plain --no-profile --out docs/bench/edge-512",
        f"python -m moebius.export.quality --model moebius-demo --size {demo['size'][0]} "
        f"--threads {machine['threads']} --out docs/bench/edge-quality-demo",
        "moebius export openvino EXPORT_DIR --model random:moebius-0.2b --threads "
        f"{machine['threads']}   # its manifest.json: docs/bench/edge-export",
        "```",
        "",
        f"The full-size student (random weights; speed does not depend on them) at 512×512: one "
        f"denoising step at batch 2 (the guided pair), a whole {steps}-step inpainting (VAE "
        f"encode and decode included), and the PSNR of that inpainting against float32 "
        f"PyTorch's from the same start (demo model: the bundled trained one, "
        f"at {demo['size'][0]}×{demo['size'][1]}):",
        "",
        "| pipeline | ms / step | vs PyTorch float32 | vs fastest PyTorch | "
        f"{steps}-step inpaint s | PSNR dB | PSNR dB, demo model |",
        "|---|---|---|---|---|---|---|",
    ]
    best = None
    for name, label, dtype, quality_label in _configs(bench):
        step = _row(bench, label, dtype)
        whole = _pipeline(bench, label, dtype)
        ms = step["latency"]["median_ms"]
        psnr = quality.get(quality_label, {}).get("psnr_db")
        demo_psnr = demo_quality.get(quality_label, {}).get("psnr_db")
        is_reference = label == STUDENT and dtype == "float32"
        cells = [
            name,
            f"{ms:.0f}",
            f"{reference / ms:.2f}×",
            f"{fastest / ms:.2f}×",
            "–" if whole is None else f"{whole['total_s']:.1f}",
            "reference" if is_reference else _db(psnr),
            "reference" if is_reference else _db(demo_psnr),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        passes = label != STUDENT and psnr is not None and psnr >= PSNR_BAR
        if passes and (best is None or ms < best[1]):
            best = (name, ms, whole)
    lines.append("")
    if best is not None:
        name, ms, whole = best
        lines.append(
            f"Fastest exported pipeline with a PSNR of at least {PSNR_BAR:.0f} dB: **{name}**, "
            f"{fastest / ms:.2f}× the speed of the fastest PyTorch path per step"
            + (
                ""
                if whole is None
                else f", a whole {steps}-step inpainting in {whole['total_s']:.1f} s"
            )
            + "."
        )
    timings = export["timings"]
    lines.append(
        f"Exporting the full-size student to OpenVINO took {timings['total_s']:.0f} s (tracing "
        f"{timings['trace_s']:.0f} s, conversion {timings['convert_s']:.0f} s, the check "
        f"against PyTorch {timings['check_s']:.0f} s); loading an export and running its first "
        f"step (OpenVINO compiles the graph for that size then) took "
        + ", ".join(
            f"{t['load_s'] + t['first_step_s']:.0f} s ({t['variant']})"
            for t in bench["edge_timings"]
            if t["variant"] in ("onnxruntime float32", "openvino bfloat16")
        )
        + "."
    )
    return "\n".join(lines)


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README is out of date")
    args = parser.parse_args()
    bench = json.loads((BENCH / "bench.json").read_text())
    demo = json.loads((DEMO / "quality.json").read_text())
    export = json.loads((EXPORT / "manifest.json").read_text())
    updated = with_section(README.read_text(), "edge", SCRIPT, render(bench, demo, export))
    return write_or_check(updated, args.check, SCRIPT)


if __name__ == "__main__":
    sys.exit(main())
