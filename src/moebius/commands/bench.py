"""``moebius bench``: per-step latency, FLOPs, memory and pipeline time of the student,
the teacher and an SD-1.5-inpainting-shaped baseline, side by side in one process."""

import argparse

from moebius.runtime import add_runtime_args
from moebius.settings import InpaintSettings

# Options whose default depends on --quick (argparse default None means "not given").
FULL = dict(
    sizes="256,512,768,1024,768x512",
    batches="1,2",
    dtypes="float32,bfloat16",
    pipeline_sizes="512",
    steps=InpaintSettings().steps,
)
QUICK = dict(sizes="256,384", batches="2", dtypes="float32", pipeline_sizes="256", steps=2)


def _sizes(text: str) -> list[tuple[int, int]]:
    from moebius.errors import InputError

    sizes = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            width, height = (
                (int(v) for v in item.lower().split("x"))
                if "x" in item.lower()
                else (int(item),) * 2
            )
        except ValueError:
            raise InputError(f"bad size {item!r}: use 512 or WIDTHxHEIGHT like 768x512") from None
        if width <= 0 or height <= 0 or width % 32 or height % 32:
            raise InputError(f"size {item!r}: sides must be positive multiples of 32 pixels")
        sizes.append((width, height))
    return sizes


def _list(text: str, allowed: tuple[str, ...] | None, what: str) -> list[str]:
    from moebius.errors import InputError

    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise InputError(f"--{what} is empty")
    bad = [i for i in items if allowed is not None and i not in allowed]
    if bad:
        raise InputError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the student against the teacher and an SD-1.5 inpainting baseline",
        description="Times one denoising step of each model, interleaved, after warm-up, at "
        "batch 1 and 2 (CFG) over several sizes and dtypes; counts parameters and FLOPs "
        "(torch.utils.flop_counter, 2 per multiply-add); measures peak memory, the full "
        "pipeline (VAE encode + N steps + decode), a matmul roofline, a per-module profile "
        "and the bfloat16 error. Writes bench.json, bench.md and latency.png to --out.",
    )
    parser.add_argument(
        "--models",
        default="moebius-0.2b,pixelhacker,sd15-inpaint",
        help="comma-separated: moebius-0.2b (or a student config path), pixelhacker, "
        "sd15-inpaint, sd-tiny (default: %(default)s)",
    )
    parser.add_argument(
        "--sizes",
        help=f"comma-separated image sizes in pixels, N or WIDTHxHEIGHT "
        f"(default: {FULL['sizes']}; --quick: {QUICK['sizes']})",
    )
    parser.add_argument(
        "--batches",
        help=f"batch sizes; 2 is the CFG pair (default: {FULL['batches']}; --quick: 2)",
    )
    parser.add_argument(
        "--dtypes",
        help="float32, bfloat16, float16; reduced precision runs under autocast "
        f"(default: {FULL['dtypes']}; --quick: {QUICK['dtypes']})",
    )
    parser.add_argument(
        "--backends",
        default="torch",
        help="torch, onnxruntime, openvino: the exported runtimes run the first student, "
        "exported once per weight scheme (float, int8, int8-dynamic, int8-static) and timed in "
        "each precision of --dtypes they offer, with the 20-step quality against float32 PyTorch "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--vae-config",
        help="diffusers AutoencoderKL config.json of the pipeline timings and exports "
        "(default: the SDXL VAE's, random weights)",
    )
    parser.add_argument(
        "--modes",
        default="eager",
        help="eager and/or compile (torch.compile; compiles every model and shape first) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="bench-results", help="results folder (default: %(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument(
        "--steps", type=int, help=f"pipeline steps (default: {FULL['steps']}; --quick: 2)"
    )
    parser.add_argument(
        "--pipeline-sizes",
        help="sizes for the full-pipeline timing; empty to skip "
        f"(default: {FULL['pipeline_sizes']}; --quick: {QUICK['pipeline_sizes']})",
    )
    parser.add_argument(
        "--roofline-size",
        type=int,
        default=2048,
        help="side of the square matrices whose product measures the roofline (default: 2048)",
    )
    parser.add_argument(
        "--no-plain",
        action="store_true",
        help="do not time the student's plain (unfused, formula-literal) path alongside",
    )
    parser.add_argument(
        "--system-allocator",
        action="store_true",
        help="CPU: leave glibc's allocator as is (by default freed memory is kept for reuse, "
        "which avoids page faults on every large tensor; applies to all models alike)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="time every kernel engine again for this machine and thread count instead of "
        "using the cached choice (the cache is rewritten; see docs/benchmarks.md)",
    )
    parser.add_argument(
        "--no-vae",
        action="store_true",
        help="skip the VAE's own timings and bfloat16/tiling errors",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-module profile")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the bfloat16 error check")
    add_runtime_args(parser, dtype=False)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run: sizes 256,384, batch 2, float32, 2-step pipeline at 256 "
        "(explicit options still win)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from moebius.bench import Benchmark, BenchSettings, markdown, plot, ratios, scaling
    from moebius.bench.runner import DTYPES
    from moebius.errors import InputError
    from moebius.files import atomic_write
    from moebius.runtime import resolve_device, resolve_dtype

    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = resolve_device(args.device)
    dtypes = _list(args.dtypes, tuple(DTYPES), "dtypes")
    for name in dtypes:
        resolve_dtype(name, device)  # the same rules as every command (no float16 on the CPU)
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if args.repeats < 1 or args.warmup < 0 or args.steps < 1 or args.roofline_size < 1:
        raise InputError("--repeats, --steps and --roofline-size must be ≥ 1, --warmup ≥ 0")
    try:
        batches = [int(b) for b in _list(args.batches, None, "batches")]
    except ValueError:
        raise InputError(f"--batches must be integers, got {args.batches!r}") from None
    settings = BenchSettings(
        models=_list(args.models, None, "models"),
        sizes=_sizes(args.sizes),
        batches=batches,
        dtypes=dtypes,
        modes=_list(args.modes, ("eager", "compile"), "modes"),
        device=str(device),
        repeats=args.repeats,
        warmup=args.warmup,
        steps=args.steps,
        pipeline_sizes=_sizes(args.pipeline_sizes) if args.pipeline_sizes else [],
        plain=not args.no_plain,
        profile=not args.no_profile,
        accuracy=not args.no_accuracy,
        threads=args.threads,
        roofline_size=args.roofline_size,
        keep_freed_memory=device.type == "cpu" and not args.system_allocator,
        tune=args.tune,
        vae=not args.no_vae,
        backends=_list(args.backends, ("torch", "onnxruntime", "openvino"), "backends"),
    )
    if args.vae_config:
        settings.vae_config = args.vae_config
    out = Path(args.out)
    log_lines: list[str] = []

    def log(line: str) -> None:
        log_lines.append(line)
        print(line, file=sys.stderr, flush=True)

    report = Benchmark(settings, log).run()
    report["ratios"] = ratios(report["results"])
    report["scaling"] = scaling(report["results"])
    atomic_write(out / "bench.json", lambda p: p.write_text(json.dumps(report, indent=1)))
    atomic_write(out / "bench.md", lambda p: p.write_text(markdown(report)))
    atomic_write(out / "bench.log", lambda p: p.write_text("\n".join(log_lines) + "\n"))
    plot(report, out / "latency.png")
    for r in report["ratios"]:
        print(
            f"{r['ratio']:16s} {r['size'][0]}x{r['size'][1]} b{r['batch']} {r['dtype']:8s} "
            f"{r['mode']:7s} {r['value']:.3f}"
        )
    print(f"wrote {out}/bench.json, bench.md, latency.png")
    return 0
