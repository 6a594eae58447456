"""Turning a benchmark's JSON into the headline ratios, growth exponents, a markdown
report and a log-log plot."""

import math
from pathlib import Path

from moebius.cpu import describe_cpu
from moebius.files import atomic_write

REFERENCE_SIZE = (512, 512)
PAPER = {"student/teacher": 26.01 / 46.89, "student/sd": 26.01 / 57.07}


def _ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("status") == "ok"]


def _median(row: dict) -> float:
    return row["latency"]["median_ms"]


def fit_exponent(pixels: list[float], ms: list[float]) -> float | None:
    """Least-squares slope of log(ms) against log(pixels): time ∝ pixels^slope."""
    if len(pixels) < 2:
        return None
    xs, ys = [math.log(p) for p in pixels], [math.log(t) for t in ms]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def scaling(results: list[dict]) -> list[dict]:
    """Per (label, dtype, mode, batch): fitted exponent over square sizes and 512→1024 growth."""
    series: dict[tuple, dict[int, float]] = {}
    for r in _ok(results):
        w, h = r["size"]
        if w == h:
            key = (r["label"], r["dtype"], r["mode"], r["batch"])
            series.setdefault(key, {})[w * h] = _median(r)
    rows = []
    for (label, dtype, mode, batch), points in sorted(series.items()):
        if len(points) < 2:
            continue  # one size: nothing to fit
        pixels = sorted(points)
        row = {
            "label": label,
            "dtype": dtype,
            "mode": mode,
            "batch": batch,
            "exponent": fit_exponent(pixels, [points[p] for p in pixels]),
            "sizes": [int(math.isqrt(p)) for p in pixels],
        }
        if 512 * 512 in points and 1024 * 1024 in points:
            row["growth_512_1024"] = math.log(points[1024**2] / points[512**2]) / math.log(4)
        rows.append(row)
    return rows


def _reference_size(results: list[dict]) -> tuple[int, int] | None:
    sizes = {tuple(r["size"]) for r in _ok(results) if r["size"][0] == r["size"][1]}
    if not sizes:
        return None
    return min(sizes, key=lambda s: abs(s[0] * s[1] - REFERENCE_SIZE[0] * REFERENCE_SIZE[1]))


def ratios(results: list[dict]) -> list[dict]:
    """Side-by-side latency ratios at 512² (or the nearest square size measured)."""
    size = _reference_size(results)
    if size is None:
        return []
    cell: dict[tuple, dict] = {}
    for r in _ok(results):
        if tuple(r["size"]) == size:
            cell[(r["label"], r["dtype"], r["mode"], r["batch"])] = r
    rows = []

    def add(name, r, other, paper=None):
        if other is not None:
            rows.append(
                {
                    "ratio": name,
                    "size": list(size),
                    "dtype": r["dtype"],
                    "mode": r["mode"],
                    "batch": r["batch"],
                    "value": _median(r) / _median(other),
                    "paper": paper,
                }
            )

    for (label, dtype, mode, batch), r in sorted(cell.items()):
        if r["role"] != "student" or r["variant"] != "default":
            continue
        same = [o for k, o in cell.items() if k[1:] == (dtype, mode, batch)]
        for o in same:
            if o["role"] == "teacher":
                add(f"student/{o['label']}", r, o, PAPER["student/teacher"])
            elif o["role"] == "baseline":
                add(f"student/{o['label']}", r, o, PAPER["student/sd"])
        add("default/plain", r, cell.get((f"{label} [plain]", dtype, mode, batch)))
        if dtype != "float32":
            add(f"{dtype}/float32", r, cell.get((label, "float32", mode, batch)))
    for (_, _, _, batch), r in sorted(cell.items()):
        if r["role"] != "edge":
            continue
        torch_rows = [
            o
            for k, o in cell.items()
            if o["role"] == "student" and o["variant"] == "default" and k[3] == batch
        ]
        add(f"{r['variant']}/torch float32", r, cell.get((r["model"], "float32", "eager", batch)))
        if torch_rows:
            add(f"{r['variant']}/fastest torch", r, min(torch_rows, key=_median))
    return rows


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# moebius bench",
        "",
        f"Machine: {m.get('gpu') or describe_cpu(m)} ({m['device']}, {m['threads']} threads), "
        f"torch {m['torch']}, {report['created']}. FLOPs: {report['flop_convention']}.",
        "",
        "## Ratios (per step; lower is faster)",
        "",
        "| ratio | size | batch | dtype | mode | measured | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["ratios"]:
        lines.append(
            f"| {r['ratio']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | {r['dtype']} "
            f"| {r['mode']} | {r['value']:.3f} | {_fmt(r['paper'])} |"
        )
    lines += [
        "",
        "## Growth with pixels (time ∝ pixels^exponent)",
        "",
        "| model | dtype | mode | batch | fitted exponent | 512→1024 | sizes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["scaling"]:
        lines.append(
            f"| {r['label']} | {r['dtype']} | {r['mode']} | {r['batch']} | {_fmt(r['exponent'], '.2f')} "
            f"| {_fmt(r.get('growth_512_1024'), '.2f')} | {', '.join(map(str, r['sizes']))} |"
        )
    roof = ", ".join(
        f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in report["roofline_flops_per_s"].items()
    )
    lines += [
        "",
        f"## Per-step latency (matmul roofline measured in this run: {roof})",
        "",
        "| model | size | batch | dtype | mode | params | GFLOP | median ms | min–max ms "
        "| % roofline | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        head = f"| {r['label']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} | {r['dtype']} | {r['mode']}"
        if r.get("status") != "ok":
            lines.append(f"{head} | {r['params'] / 1e6:.1f}M | | {r.get('status')} | | | |")
            continue
        lat = r["latency"]
        share = r["roofline_fraction"]
        lines.append(
            f"{head} | {r['params'] / 1e6:.1f}M | {r['flops'] / 1e9:.1f} | {lat['median_ms']:.1f} "
            f"| {lat['min_ms']:.1f}–{lat['max_ms']:.1f} | "
            f"{'–' if share is None else f'{100 * share:.0f}'} "
            f"| {r['peak_memory_bytes'] / 2**20:.0f} |"
        )
    if report.get("pipeline"):
        lines += [
            "",
            "## Full pipeline (VAE encode ×2 + N CFG steps + decode, batch 1 image)",
            "",
            "| model | size | dtype | steps | encode s | denoise s | decode s | total s "
            "| VAE share |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["pipeline"]:
            lines.append(
                f"| {r['label']} | {r['size'][0]}x{r['size'][1]} | {r['dtype']} | {r['steps']} "
                f"| {r['encode_s']:.2f} | {r['denoise_s']:.2f} | {r['decode_s']:.2f} "
                f"| {r['total_s']:.2f} | {100 * r['vae_share']:.0f}% |"
            )
    lines += _vae_lines(report.get("vae"))
    for label, prof in report.get("profile", {}).items():
        w, h = prof["size"]
        lines += [
            "",
            f"## Where the time goes: {label}, {w}x{h}, batch 1, float32",
            "",
            "| module | ms | share |",
            "|---|---|---|",
        ]
        for r in prof["rows"]:
            lines.append(f"| {r['module']} | {r['ms']:.1f} | {100 * r['share']:.0f}% |")
    for name, variants in report.get("local_lambda", {}).items():
        w, h = variants["size"]
        lines += [
            "",
            f"## Local-λ, two exact ways: {name} at {w}x{h}, batch 2, float32",
            "",
            "Plain: every value channel convolved with the r×r kernel bank, then the queries "
            "applied. Default: the queries contracted with the kernel bank first.",
            "",
            "| level | channels | latent | plain ms | default ms | default/plain "
            "| plain GFLOP | default GFLOP |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in variants["rows"]:
            lines.append(
                f"| {r['level']} | {r['channels']} | {r['size'][0]}x{r['size'][1]} "
                f"| {r['plain_ms']:.1f} | {r['default_ms']:.1f} | {r['ratio']:.2f} "
                f"| {r['plain_flops'] / 1e9:.2f} | {r['default_flops'] / 1e9:.2f} |"
            )
    if report.get("edge_timings"):
        lines += [
            "",
            "## Exported runtimes: export and load",
            "",
            "Export: tracing (once for all variants) + conversion + the check against PyTorch; "
            "load: reading the graphs; first step: batch 2 at the trained size (OpenVINO "
            "compiles the graph for it).",
            "",
            "| variant | export s | load s | first step s |",
            "|---|---|---|---|",
        ]
        for r in report["edge_timings"]:
            lines.append(
                f"| {r['variant']} | {r['export_s']:.1f} | {r['load_s']:.1f} "
                f"| {r['first_step_s']:.1f} |"
            )
    if report.get("edge_quality"):
        from moebius.export.quality import markdown as quality_markdown

        quality = quality_markdown(report["edge_quality"], "Exported runtimes: quality")
        lines += ["", "#" + quality.rstrip()]
    for a in report.get("accuracy", []):
        lines += [
            "",
            f"## {a['dtype']} against float32 ({a['size'][0]}x{a['size'][1]})",
            "",
            f"- noise prediction: max |Δ| {a['eps_max_abs']:.3g}, mean |Δ| {a['eps_mean_abs']:.3g} "
            f"(mean |ε| {a['eps_ref_mean_abs']:.3g})",
            f"- {a['trajectory_steps']}-step DDIM latent: max |Δ| {a['latent_max_abs']:.3g}, "
            f"mean |Δ| {a['latent_mean_abs']:.3g} (mean |z| {a['latent_ref_mean_abs']:.3g})",
            f"- the image it decodes to (trained demo VAE, in {a['dtype']} for the {a['dtype']} "
            f"run): PSNR {a['decoded']['psnr_db']:.1f} dB against float32, max |Δ| "
            f"{a['decoded']['max_abs']}/255",
        ]
    lines += _engine_lines(report.get("engines"))
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Log-log per-step latency against pixels at the largest batch, one line per model/dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = _ok(report["results"])
    batch = max((r["batch"] for r in results), default=1)
    fig, ax = plt.subplots(figsize=(7, 5))
    exponents = {
        (r["label"], r["dtype"], r["mode"]): r["exponent"]
        for r in report["scaling"]
        if r["batch"] == batch
    }
    groups: dict[tuple, list] = {}
    for r in results:
        if r["batch"] == batch:
            groups.setdefault((r["label"], r["dtype"], r["mode"]), []).append(r)
    for key, rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["size"][0] * r["size"][1])
        px = [r["size"][0] * r["size"][1] for r in rows]
        ms = [_median(r) for r in rows]
        exp = exponents.get(key)
        label = f"{key[0]} {key[1]} {key[2]}" + ("" if exp is None else f" (∝ px^{exp:.2f})")
        ax.loglog(px, ms, marker="o", label=label)
    ax.set_xlabel("pixels per image")
    ax.set_ylabel(f"ms per step (batch {batch})")
    machine = report["machine"]
    ax.set_title(f"moebius bench — {machine.get('gpu') or describe_cpu(machine)}")
    ax.grid(True, which="both", alpha=0.3)
    # beside the axes: with the exported runtimes there are enough lines to hide points
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def _vae_lines(vae: dict | None) -> list[str]:
    if not vae:
        return []
    lines = [
        "",
        "## The VAE",
        "",
        "Seconds per call, in turns (SDXL VAE configuration, random weights):",
        "",
        "| run | dtype | size | GFLOP | median s |",
        "|---|---|---|---|---|",
    ]
    for r in vae["timings"]:
        gflop = f"{r['gflop']:.0f}" if "gflop" in r else "–"
        lines.append(
            f"| {r['run']} | {r['dtype']} | {r['size'][0]}x{r['size'][1]} | {gflop} "
            f"| {r['median_s']:.2f} |"
        )
    e = vae.get("errors")
    if e:
        w, h = e["size"]
        lines += [
            "",
            f"Errors of the {e['vae']} on a {w}x{h} photo:",
            "",
            f"- {e['dtype']} encoder: mean |Δ| {e['encode_latent_mean_abs']:.3g} on the latent "
            f"(mean |z| {e['latent_ref_mean_abs']:.3g})",
            f"- {e['dtype']} decoder: PSNR {e['decode']['psnr_db']:.1f} dB against float32, "
            f"max |Δ| {e['decode']['max_abs']}/255",
            f"- decoding in {e['tile']} px tiles: PSNR {e['tiled_decode']['psnr_db']:.1f} dB "
            f"against decoding whole, max |Δ| {e['tiled_decode']['max_abs']}/255 (the seams)",
        ]
        if "tiled_decode_plain" in e:
            plain = e["tiled_decode_plain"]
            lines[-1] += (
                f"; diffusers' tiles with per-tile GroupNorm statistics: {plain['psnr_db']:.1f}"
                f" dB, max |Δ| {plain['max_abs']}/255"
            )
    return lines


def _engine_lines(engines: dict | None) -> list[str]:
    if not engines or not engines.get("choices"):
        return []
    counts: dict[tuple[str, str], int] = {}
    for key, engine in engines["choices"].items():
        kind, dtype = key.split()[:2]
        counts[(f"{kind} {dtype}", engine)] = counts.get((f"{kind} {dtype}", engine), 0) + 1
    lines = [
        "",
        f"## Engines chosen on this machine ({engines['mode']}; cache {engines['cache']})",
        "",
        *(
            [f"Moebius's native kernels: {engines['native_kernels']}.", ""]
            if "native_kernels" in engines
            else []
        ),
        "| operation | engine | shapes |",
        "|---|---|---|",
    ]
    for (operation, engine), count in sorted(counts.items()):
        lines.append(f"| {operation} | {engine} | {count} |")
    return lines
