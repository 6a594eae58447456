"""Write README's speed section from the `moebius bench` runs kept in docs/bench/.

    python scripts/update_readme_speed.py           # rewrite the section in README.md
    python scripts/update_readme_speed.py --check   # exit 1 if README.md is out of date

The section sits between the two ``speed:`` markers; everything in it comes from
the bench.json of the four `moebius bench` runs kept in docs/bench/ and from the compare.json of
``scripts/compare_authors.py`` (when kept there), so README numbers cannot drift from what the
commands printed. The targets it checks them against are those of the project's CPU speed work
(512 px, batch 2, 2 threads).
"""

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from readme_sections import README, with_section, write_or_check

from moebius.cpu import describe_cpu, same_cpu_kind

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).name
SIDE_BY_SIDE = ROOT / "docs" / "bench" / "side-by-side-512"
INPAINT = ROOT / "docs" / "bench" / "inpaint-512"
GROWTH = ROOT / "docs" / "bench" / "student-growth"
COMPILE = ROOT / "docs" / "bench" / "compile-512"
AUTHORS = ROOT / "docs" / "bench" / "authors-side-by-side"
# The same side-by-side runs on a CPU of another class (AVX2 only: no AVX-512, no bfloat16).
OTHER_CPU = ROOT / "docs" / "bench" / "side-by-side-512-avx2"
OTHER_CPU_AUTHORS = ROOT / "docs" / "bench" / "authors-side-by-side-avx2"
# Earlier runs of the side-by-side and inpainting commands on the same code, one folder each:
# the target table counts them too, since this VM's speed moves from run to run.
REPEATS = ROOT / "docs" / "bench" / "repeats"

STUDENT, TEACHER, SD = "moebius-0.2b", "pixelhacker", "sd15-inpaint"
# what → (goal, whether it is a most rather than a least, unit)
TARGETS = {
    "float32 step, share of the float32 roofline": (0.80, False, "%"),
    "bfloat16 step, share of the bfloat16 roofline": (0.75, False, "%"),
    "ours float32 step speed / the authors' float32": (1.6, False, "×"),
    "ours bfloat16 step speed / the authors' float32": (3.0, False, "×"),
    "whole 20-step 512 px inpainting in bfloat16": (22.0, True, "s"),
    "VAE share of that inpainting": (0.15, True, "%"),
}
# The float32 roofline of the VM (AMD EPYC with AVX-512 BF16, 2 threads) on which the goal in
# seconds was set, measured as `moebius bench` measures it.
GOAL_MACHINE_FLOAT32_ROOFLINE = 420.0
UNITS = {"%": lambda v: f"{100 * v:.0f} %", "×": lambda v: f"{v:.2f}×", "s": lambda v: f"{v:.1f} s"}
PLAIN = f"{STUDENT} [plain]"
NAMES = {
    STUDENT: "Moebius student (default path)",
    PLAIN: "Moebius student (plain path)",
    TEACHER: "PixelHacker teacher",
    SD: "SD-1.5-inpainting shape",
}


def _command(report: dict, out: Path) -> str:
    s = report["settings"]

    def join(values) -> str:
        return ",".join(str(v) for v in values)

    sizes = join(w if w == h else f"{w}x{h}" for w, h in s["sizes"])
    parts = [
        "moebius bench",
        f"--models {join(s['models'])}",
        f"--sizes {sizes}",
        f"--batches {join(s['batches'])}",
        f"--dtypes {join(s['dtypes'])}",
        *([f"--modes {join(s['modes'])}"] if s["modes"] != ["eager"] else []),
        f"--threads {s['threads']}",
    ]
    pipeline = join(w if w == h else f"{w}x{h}" for w, h in s["pipeline_sizes"]) or '""'
    parts.append(f"--pipeline-sizes {pipeline}")
    if not s["plain"]:
        parts.append("--no-plain")
    if not s["profile"]:
        parts.append("--no-profile")
    if not s["accuracy"]:
        parts.append("--no-accuracy")
    if not s.get("vae", True) and s["pipeline_sizes"]:
        parts.append("--no-vae")
    if s.get("tune"):
        parts.append("--tune")
    parts.append(f"--out {out.relative_to(ROOT)}")
    return " ".join(parts)


def _ms(report: dict, label: str, batch: int, dtype: str, size=(512, 512)) -> dict | None:
    for r in report["results"]:
        if (r["label"], r["batch"], r["dtype"], tuple(r["size"])) == (label, batch, dtype, size):
            return r if r.get("status") == "ok" else None
    return None


def _median(row: dict | None) -> float | None:
    return None if row is None else row["latency"]["median_ms"]


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def render(
    side: dict,
    inpaint: dict,
    growth: dict,
    compiled: dict,
    compared: dict | None,
    repeats: Sequence[dict] = (),
) -> str:
    machine = side["machine"]
    batches = sorted(side["settings"]["batches"])
    dtypes = side["settings"]["dtypes"]
    runs = ((side, SIDE_BY_SIDE), (inpaint, INPAINT), (growth, GROWTH), (compiled, COMPILE))
    dates = sorted({report["created"][:10] for report, _ in runs})
    lines = [
        f"Measured on a VM ({describe_cpu(machine)}) with {machine['threads']} threads, torch "
        f"{machine['torch']}, on {' and '.join(dates)}, by (the run's date first):",
        "",
        "```bash",
        *(f"# {_when(report, side)}\n{_command(report, out)}" for report, out in runs),
        "```",
        "",
        "Per denoising step at 512×512 (lower is faster; the paper's ratios are GPU timings):",
        "",
        "| ratio | batch | " + " | ".join(dtypes) + " | paper |",
        "|---|---|" + "---|" * len(dtypes) + "---|",
    ]
    pairs = [
        ("student / teacher", TEACHER, f"{26.01 / 46.89:.3f}"),
        ("student / SD-1.5-inpainting shape", SD, f"{26.01 / 57.07:.3f}"),
        ("student default path / plain path", PLAIN, "–"),
    ]
    for name, other, paper in pairs:
        for batch in batches:
            cells = [
                _fmt(
                    _ratio(
                        _median(_ms(side, STUDENT, batch, d)), _median(_ms(side, other, batch, d))
                    ),
                    ".3f",
                )
                for d in dtypes
            ]
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + f" | {paper} |")

    lines += [
        "",
        "| model | params | GFLOP / step at batch 1 (2 per MAC) | "
        + " | ".join(f"{d} ms, batch {b}" for d in dtypes for b in batches)
        + " |",
        "|---|---|---|" + "---|" * (len(dtypes) * len(batches)),
    ]
    for label, name in NAMES.items():
        first = _ms(side, label, 1, "float32") or _ms(side, label, batches[0], dtypes[0])
        if first is None:
            continue
        flops = first["flops"] / first["batch"] / 1e9
        cells = [_fmt(_median(_ms(side, label, b, d)), ".0f") for d in dtypes for b in batches]
        lines.append(
            f"| {name} | {first['params'] / 1e6:.1f} M | {flops:.1f} | " + " | ".join(cells) + " |"
        )

    lines += [
        "",
        *_against_authors(side, compared),
        *_notes(side, inpaint, growth),
        *_compile_note(compiled),
        "",
        *_targets(side, inpaint, compared, repeats),
    ]
    return "\n".join(lines)


def _when(report: dict, side: dict) -> str:
    """A run's date, and its CPU where that is not the side-by-side run's."""
    if same_cpu_kind(report["machine"], side["machine"]):
        return report["created"][:10]
    return f"{report['created'][:10]}, on {describe_cpu(report['machine'])}"


def _targets(
    side: dict, inpaint: dict, compared: dict | None, repeats: Sequence[dict] = ()
) -> list[str]:
    """Each target of the CPU speed work against what these runs measured. A step's share of
    the roofline is taken from every bench run that times it (each against its own roofline),
    ``repeats`` included: this VM's speed moves between runs, so a target counts as reached
    only if every run reaches it."""
    measured: dict[str, float | list[float] | None] = dict.fromkeys(TARGETS)
    for dtype in ("float32", "bfloat16"):
        rows = [_ms(report, STUDENT, 2, dtype) for report in (side, inpaint, *repeats)]
        shares = [row["roofline_fraction"] for row in rows if row is not None]
        measured[f"{dtype} step, share of the {dtype} roofline"] = shares or None
    if compared is not None:
        by = {(r["model"], r["dtype"], r["batch"]): r["median_ms"] for r in compared["results"]}
        theirs = by.get(("authors", "float32", 2))
        for dtype in ("float32", "bfloat16"):
            ours = by.get(("ours", dtype, 2))
            measured[f"ours {dtype} step speed / the authors' float32"] = _ratio(theirs, ours)
    whole = [
        p
        for p in inpaint.get("pipeline", [])
        if (p["label"], p["dtype"], p["steps"], tuple(p["size"]))
        == (STUDENT, "bfloat16", 20, (512, 512))
    ]
    if whole:
        measured["whole 20-step 512 px inpainting in bfloat16"] = whole[0]["total_s"]
        measured["VAE share of that inpainting"] = whole[0].get("vae_share")
    lines = [
        "Against the targets of the CPU speed work (512 px, batch 2 = one CFG step, 2 threads, "
        "the runs above"
        + (
            f" and {len(repeats)} earlier runs of the same commands on the same CPU, kept in "
            f"[docs/bench/repeats/](docs/bench/repeats/)):"
            if repeats
            else "):"
        ),
        "",
        "| target | goal | measured | reached |",
        "|---|---|---|---|",
    ]
    for what, (goal, at_most, unit) in TARGETS.items():
        values, shown = measured[what], UNITS[unit]
        if values is None:
            reached, text = "–", "–"
        else:
            values = sorted(values) if isinstance(values, list) else [values]
            worst = values[-1] if at_most else values[0]
            reached = "yes" if (worst <= goal if at_most else worst >= goal) else "**no**"
            texts = list(dict.fromkeys(shown(v) for v in values))
            text = (
                texts[0] if len(texts) == 1 else f"{texts[0]} to {texts[-1]} ({len(values)} runs)"
            )
        lines.append(f"| {what} | {'≤' if at_most else '≥'} {shown(goal)} | {text} | {reached} |")
    if whole:
        lines += _seconds_goal(inpaint) + _vae_bound(inpaint, whole[0])
    return lines


def _seconds_goal(inpaint: dict) -> list[str]:
    """Where the goal in seconds came from: seconds do not carry between machines."""
    here = inpaint["roofline_flops_per_s"]["float32"] / 1e9
    return [
        "",
        f"The goal in seconds was set on a VM whose float32 matrix-product roofline measured "
        f"{GOAL_MACHINE_FLOAT32_ROOFLINE:.0f} GFLOP/s; the run above measured {here:.0f} GFLOP/s. "
        "Seconds compare only on one machine; the shares and ratios above are each measured "
        "within one run.",
    ]


def _vae_bound(inpaint: dict, pipeline: dict) -> list[str]:
    """What the VAE's arithmetic alone allows of its share: its FLOPs against the steps'."""
    vae = inpaint.get("vae") or {}
    work = {r["run"]: r["gflop"] for r in vae.get("timings", []) if "gflop" in r}
    step = _ms(inpaint, STUDENT, 2, pipeline["dtype"], tuple(pipeline["size"]))
    if step is None or not {"encode pair, one batch", "decode, channels-last"} <= work.keys():
        return []
    vae_gflop = work["encode pair, one batch"] + work["decode, channels-last"]
    steps_gflop = pipeline["denoising_steps"] * step["flops"] / 1e9
    share = vae_gflop / (vae_gflop + steps_gflop)
    vae_rate = vae_gflop / pipeline["vae_s"]
    steps_rate = steps_gflop / pipeline["denoise_s"]
    roofline = inpaint["roofline_flops_per_s"][pipeline["dtype"]] / 1e9
    goal = TARGETS["VAE share of that inpainting"][0]
    # time share ≤ goal  ⇔  VAE rate / steps' rate ≥ (1 − goal) / goal · VAE FLOPs / steps' FLOPs
    needed = (1 - goal) / goal * vae_gflop / steps_gflop
    return [
        "",
        f"The VAE's share is bounded by its arithmetic: the photo and the masked photo encoded "
        f"({work['encode pair, one batch']:.0f} GFLOP) and one decode "
        f"({work['decode, channels-last']:.0f} GFLOP) are {100 * share:.0f} % of that "
        f"inpainting's matrix-product FLOPs beside its {pipeline['denoising_steps']} guided "
        f"steps ({steps_gflop:.0f} GFLOP). It ran at {vae_rate:.0f} GFLOP/s against the steps' "
        f"{steps_rate:.0f}, which is why its share of the time is lower; {100 * goal:.0f} % "
        f"would need it {needed:.1f}× the steps' FLOP rate, {needed * steps_rate / roofline:.1f}× "
        f"the {pipeline['dtype']} matrix-product roofline of the run ({roofline:.0f} GFLOP/s), "
        "which no direct convolution can pass: a lighter VAE (or one computed with fewer "
        "multiplications), not faster kernels.",
    ]


def _engine_counts(chosen: dict[str, str]) -> str:
    """How many shapes each engine was chosen for, e.g. ``aten for 74, onednn for 5``."""
    counts = Counter(chosen.values())
    return ", ".join(f"{engine} for {n}" for engine, n in sorted(counts.items()))


def _authors_steps(compared: dict) -> str:
    """Their float32 step against ours in each precision the comparison timed, per batch."""
    by = {(r["model"], r["dtype"], r["batch"]): r["median_ms"] for r in compared["results"]}
    parts = []
    for batch in compared["settings"]["batches"]:
        theirs, ours32 = by[("authors", "float32", batch)], by[("ours", "float32", batch)]
        part = (
            f"at batch {batch} their float32 step takes {theirs / 1000:.2f} s; ours "
            f"{ours32 / 1000:.2f} s in float32 (**{theirs / ours32:.2f}×** faster)"
        )
        if ("ours", "bfloat16", batch) in by:
            ours16, theirs16 = by[("ours", "bfloat16", batch)], by[("authors", "bfloat16", batch)]
            part += (
                f" and {ours16 / 1000:.2f} s in bfloat16 (**{theirs / ours16:.2f}×**; their "
                f"bfloat16 under autocast: {theirs16 / 1000:.2f} s)"
            )
        parts.append(part)
    return "; ".join(parts)


def _against_authors(side: dict, compared: dict | None) -> list[str]:
    """The authors' implementation and ours, timed in turns in one process (compare.json)."""
    plain = [
        f"{_median(_ms(side, PLAIN, b, 'float32')) / _median(_ms(side, STUDENT, b, 'float32')):.2f}×"
        f" at batch {b}"
        for b in sorted(side["settings"]["batches"])
        if _ms(side, PLAIN, b, "float32") and _ms(side, STUDENT, b, "float32")
    ]
    lines = []
    if compared is not None:
        machine, settings = compared["machine"], compared["settings"]
        check = max(
            c["max_rel_vs_authors_float32"]
            for c in compared["checks"]
            if (c["model"], c["dtype"]) == ("ours", "float32")
        )
        lines += [
            "Side by side with the authors' implementation (hustvl/Moebius), in one process on "
            f"the same machine ({describe_cpu(machine)}, {settings['threads']} threads, torch "
            f"{machine['torch']}, {compared['created'][:10]}), the same random weights and "
            f"inputs, timed in turns (median of {settings['repeats']}), at "
            f"{settings['size']} px: " + _authors_steps(compared) + ". Our float32 noise "
            f"prediction equals theirs to {check:.1e} (relative). Command:",
            "",
            "```bash",
            compared["command"],
            "```",
            "",
        ]
    if plain:
        lines += [
            "Side by side in the bench run, the default path is faster than our plain path "
            "(the paper's formulas, unfused) by " + " and ".join(plain) + " in float32.",
            "",
        ]
    return lines


def _notes(side: dict, inpaint: dict, growth: dict) -> list[str]:
    lines = []
    for r in growth["scaling"]:
        if r["label"] == STUDENT and r["dtype"] == "float32" and "growth_512_1024" in r:
            t512 = _median(_ms(growth, STUDENT, r["batch"], "float32", (512, 512)))
            t1024 = _median(_ms(growth, STUDENT, r["batch"], "float32", (1024, 1024)))
            lines.append(
                f"The student's time grows as pixels^{r['growth_512_1024']:.2f} from 512 to "
                f"1024 ({t512 / 1000:.2f} s → {t1024 / 1000:.2f} s per batch-{r['batch']} "
                f"step; pixels^{r['exponent']:.2f} fitted over "
                f"{', '.join(map(str, r['sizes']))} px; the {growth['created'][:10]} run)."
            )
    if growth["created"][:10] != side["created"][:10]:
        then, now = (
            growth["roofline_flops_per_s"]["float32"],
            side["roofline_flops_per_s"]["float32"],
        )
        lines.append(
            f"The float32 roofline measured {now / 1e9:.0f} GFLOP/s in the {side['created'][:10]} "
            f"run against {then / 1e9:.0f} GFLOP/s in the {growth['created'][:10]} one: the same "
            "VM class does not always run at the same speed, so seconds compare only within a run."
        )
    reached = [
        (dtype, row["roofline_fraction"], side["roofline_flops_per_s"][dtype])
        for dtype in side["settings"]["dtypes"]
        if (row := _ms(side, STUDENT, 2, dtype)) is not None
    ]
    if reached:
        parts = [
            f"{100 * share:.0f} % of the {dtype} {'matrix-product roofline measured in the same run' if i == 0 else 'one'} ({rate / 1e9:.0f} GFLOP/s)"
            for i, (dtype, share, rate) in enumerate(reached)
        ]
        lines.append(
            "At batch 2 its default path reaches " + " and ".join(parts) + ", each the "
            f"fastest engine on a {side['settings']['roofline_size']}³ product."
        )
    for dtype, rates in side.get("roofline_by_engine_flops_per_s", {}).items():
        each = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in rates.items())
        lines.append(f"That {dtype} product, GFLOP/s by engine: {each}.")
    chosen = inpaint.get("engines", {}).get("choices")  # the later run: its cache has both
    if chosen:
        lines.append(
            "Every product and convolution runs on the engine timed fastest for its shape on "
            "this machine (`moebius.nn.engines`); here: "
            + _engine_counts(chosen)
            + f" of the {len(chosen)} shapes in the engine cache after these runs."
            + (
                f" Timing every engine on the first run's shapes (`--tune`: "
                f"{len(side['settings']['models'])} models in "
                f"{' and '.join(side['settings']['dtypes'])}) took "
                f"{side['engines']['tuning_seconds']:.0f} s of that run."
                if side["settings"].get("tune") and "engines" in side
                else ""
            )
        )
    pipeline: dict[str, list[str]] = {}
    for p in inpaint.get("pipeline", []):
        share = f", {100 * p['vae_share']:.0f} % of it in the VAE" if "vae_share" in p else ""
        pipeline.setdefault(p["label"], []).append(f"{p['total_s']:.1f} s in {p['dtype']}{share}")
    if STUDENT in pipeline:
        others = [
            f"{name.split(' (')[0]}: {' / '.join(pipeline[label])}"
            for label, name in NAMES.items()
            if label != STUDENT and label in pipeline
        ]
        steps, size = inpaint["settings"]["steps"], inpaint["pipeline"][0]["size"][0]
        lines.append(
            f"A whole {steps}-step {size} px inpainting (VAE included) took "
            + " and ".join(pipeline[STUDENT])
            + (f" ({'; '.join(others)})." if others else ".")
        )
    tuned = inpaint.get("engines", {}).get("tuning_seconds", 0)
    if tuned and not all(p.get("warmed_up") for p in inpaint.get("pipeline", [])):
        lines.append(
            "That run timed each inpainting cold: its times include tuning the VAE's shapes on "
            f"first use ({tuned:.0f} s of tuning in the run), which a machine pays once, so they "
            "overstate later runs; `moebius bench` now times the inpainting after a warm-up."
        )
    local = side.get("local_lambda", {}).get(STUDENT)
    if local:
        ratios = " / ".join(f"{r['ratio']:.2f}" for r in local["rows"])
        lines.append(
            "For Local-λ's 15×15 positional lambdas, contracting the queries with the kernel "
            f"bank first takes {ratios} of the time of convolving the values first (levels "
            f"{' / '.join(str(r['level']) for r in local['rows'])}, batch "
            f"{local['rows'][0]['batch']}, float32)"
            + (
                ", so the default path does that."
                if all(r["ratio"] < 1 for r in local["rows"])
                else "; the default path does that at every level, slower where that is above 1."
            )
        )
    for a in inpaint.get("accuracy", []):
        decoded = a.get("decoded")
        lines.append(
            f"{a['dtype']} error against float32: {a['eps_mean_abs']:.4f} mean / "
            f"{a['eps_max_abs']:.3f} max on one noise prediction (mean |ε| "
            f"{a['eps_ref_mean_abs']:.2f}), {a['latent_mean_abs']:.3f} mean on the final "
            f"latent of a {a['trajectory_steps']}-step trajectory (mean |z| "
            f"{a['latent_ref_mean_abs']:.2f})"
            + (
                f"; the image that latent decodes to is {decoded['psnr_db']:.1f} dB PSNR from "
                f"the float32 one (max {decoded['max_abs']}/255; trained demo VAE)."
                if decoded
                else "."
            )
        )
    lines += _vae_notes(inpaint.get("vae"))
    return lines


def _vae_notes(vae: dict | None) -> list[str]:
    if not vae:
        return []
    by = {(r["run"], r["dtype"]): r["median_s"] for r in vae["timings"]}
    lines = []
    for dtype in sorted({r["dtype"] for r in vae["timings"]}):
        lines.append(
            f"VAE in {dtype}: the image and the masked image encoded as one batch take "
            f"{by[('encode pair, one batch', dtype)]:.2f} s against "
            f"{by[('encode pair, two batches', dtype)]:.2f} s one at a time; a channels-last "
            f"decode {by[('decode, channels-last', dtype)]:.2f} s against "
            f"{by[('decode, channels-first', dtype)]:.2f} s channels-first."
        )
    e = vae.get("errors")
    if e:
        lines.append(
            f"On a real photo the {e['vae']} decodes in {e['dtype']} to "
            f"{e['decode']['psnr_db']:.1f} dB PSNR from its float32 decode (max "
            f"{e['decode']['max_abs']}/255), and in {e['tile']} px tiles to "
            f"{e['tiled_decode']['psnr_db']:.1f} dB (max {e['tiled_decode']['max_abs']}/255, at "
            "the seams; tiles are used above 1024 px)."
        )
        if "tiled_decode_plain" in e:
            lines[-1] += (
                " Each tile normalises with the whole image's GroupNorm statistics; with its own"
                f" (diffusers' tiling) the same decode is {e['tiled_decode_plain']['psnr_db']:.1f}"
                f" dB (max {e['tiled_decode_plain']['max_abs']}/255)."
            )
    return lines


def _compile_note(compiled: dict) -> list[str]:
    rows = {
        r["mode"]: r
        for r in compiled["results"]
        if r["label"] == STUDENT and r.get("status") == "ok" and r["dtype"] == "float32"
    }
    if set(rows) != {"eager", "compile"}:
        return []
    eager, graph = _median(rows["eager"]), _median(rows["compile"])
    return [
        f"`torch.compile` (Inductor) gives {graph / 1000:.2f} s per batch-{rows['eager']['batch']} "
        f"float32 step against {eager / 1000:.2f} s eager ({graph / eager:.2f}× the time, the "
        f"{compiled['created'][:10]} run): compiled code takes PyTorch's usual kernels, not the "
        "engines chosen for the machine, so eager stays the default on CPU."
    ]


def _other_cpu(side: dict | None, compared: dict | None) -> list[str]:
    """The float32 runs on a CPU of another class, in a paragraph of their own."""
    if side is None:
        return []
    machine = side["machine"]
    steps = ", ".join(
        f"{NAMES[label].split(' (')[0]}{' (plain path)' if label == PLAIN else ''} "
        f"{_median(row) / 1000:.2f} s"
        for label in (PLAIN, TEACHER, SD)
        if (row := _ms(side, label, 2, "float32")) is not None
    )
    student = _ms(side, STUDENT, 2, "float32")
    rates = side.get("roofline_by_engine_flops_per_s", {}).get("float32", {})
    precision = (
        "native bfloat16"
        if machine["native_bfloat16"]
        else "no native bfloat16, so `--dtype auto` runs float32 there"
    )
    lines = [
        f"On a CPU of another class, a VM ({describe_cpu(machine)}; {precision}), "
        f"{machine['threads']} threads, {side['created'][:10]}: one batch-2 float32 step of "
        f"the student takes {_median(student) / 1000:.2f} s ({steps}), "
        f"{100 * student['roofline_fraction']:.0f} % of the float32 matrix-product roofline "
        f"measured in that run ({side['roofline_flops_per_s']['float32'] / 1e9:.0f} GFLOP/s; "
        "by engine: " + ", ".join(f"{n} {r / 1e9:.0f}" for n, r in rates.items()) + ")."
    ]
    chosen = side.get("engines", {}).get("choices")
    if chosen:
        lines[-1] += (
            f" The engines timed fastest there: {_engine_counts(chosen)} of {len(chosen)} shapes."
        )
    if compared is not None:
        lines[-1] += (
            " Beside the authors' implementation on that machine: " + _authors_steps(compared) + "."
        )
        ours = next(
            r["median_ms"]
            for r in compared["results"]
            if (r["model"], r["dtype"], r["batch"]) == ("ours", "float32", 2)
        )
        if abs(ours / _median(student) - 1) > 0.1:
            lines[-1] += (
                f" The same step took {_median(student) / 1000:.2f} s in the bench and "
                f"{ours / 1000:.2f} s in the comparison, minutes apart: this VM's speed moves "
                "that much between runs, so only ratios within one run compare."
            )
    commands = [f"{_command(side, OTHER_CPU)}"]
    if compared is not None:
        commands.append(compared["command"])
    return ["", "", *lines, "", "```bash", *commands, "```"]


def updated_readme() -> str:
    side, inpaint, growth, compiled = (
        json.loads((folder / "bench.json").read_text())
        for folder in (SIDE_BY_SIDE, INPAINT, GROWTH, COMPILE)
    )
    compare = AUTHORS / "compare.json"
    compared = json.loads(compare.read_text()) if compare.is_file() else None
    other = OTHER_CPU / "bench.json"
    other_compare = OTHER_CPU_AUTHORS / "compare.json"
    # Earlier runs count towards the targets only where they ran on the same kind of CPU.
    repeats = [
        report
        for report in (
            json.loads(path.read_text()) for path in sorted(REPEATS.glob("*/bench.json"))
        )
        if same_cpu_kind(report["machine"], side["machine"])
    ]
    body = render(side, inpaint, growth, compiled, compared, repeats) + "\n".join(
        _other_cpu(
            json.loads(other.read_text()) if other.is_file() else None,
            json.loads(other_compare.read_text()) if other_compare.is_file() else None,
        )
    )
    return with_section(README.read_text(), "speed", SCRIPT, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether it is current")
    args = parser.parse_args()
    return write_or_check(updated_readme(), args.check, SCRIPT)


if __name__ == "__main__":
    sys.exit(main())
