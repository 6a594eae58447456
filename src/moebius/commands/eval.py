"""``moebius eval``: the paper's benchmark protocols — inpaint, then FID / LPIPS / IDS / PSNR / SSIM."""

import argparse
import sys

from moebius.runtime import add_runtime_args
from moebius.settings import add_settings_args

# the protocols fix the rest: each image at protocol size, the original strategy, blend paste
EVAL_SETTINGS = (
    "steps",
    "guidance",
    "strength",
    "prefill",
    "noise_offset",
    "seed",
    "category",
    "scheduler",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    from moebius.eval.protocols import ALL_METRICS, PROTOCOLS

    parser = subparsers.add_parser(
        "eval",
        help="score a model (or existing outputs) on a benchmark protocol: FID, LPIPS, U-IDS/P-IDS, PSNR, SSIM",
        description="Inpaint the images of IMAGES with the protocol's masks (resumable, batched) "
        "or read existing outputs from --predictions, then compute the metrics. Writes "
        "OUT/metrics.json, OUT/results.md (a row comparable to the paper's table), "
        "OUT/contact_sheet.png and per-image files. Under torchrun (torchrun --nproc_per_node N "
        "-m moebius.cli eval …) the ranks share inference and scoring, with the same scores "
        "(docs/scaling.md). Protocols: "
        + "; ".join(f"{p.name}: {p.notes}" for p in PROTOCOLS.values()),
    )
    parser.add_argument(
        "--protocol", required=True, choices=list(PROTOCOLS), help="benchmark preset"
    )
    parser.add_argument(
        "--images", required=True, help="folder of ground-truth images (sorted by name)"
    )
    parser.add_argument("--out", help="results folder (default: eval-<protocol>)")
    parser.add_argument(
        "--masks",
        help="folder of evaluation masks (same names as the images, or numbered in image order); "
        "default: the protocol's generator with --seed",
    )
    parser.add_argument(
        "--masks-white",
        choices=("keep", "hole"),
        help="what white means in --masks files (default: 'keep', the authors' published sets)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        help="pipeline to run: a save_pretrained folder, an authors'-layout folder or a Hub repo id",
    )
    source.add_argument(
        "--predictions",
        help="score existing outputs instead: folder with <image name>.png per image",
    )
    parser.add_argument(
        "--variant",
        help="weights variant for --model (default: the protocol's fine-tuned one, e.g. ft_celebahq)",
    )
    parser.add_argument(
        "--model-config", help="model preset override for --model (e.g. pixelhacker)"
    )
    parser.add_argument(
        "--name", help="model name in the results table (default: from --model/--predictions)"
    )
    parser.add_argument("--limit", type=int, help="only the first N images (quick checks)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per batch (default: 4)")
    parser.add_argument(
        "--hole-fill",
        choices=("original", "gray"),
        default="original",
        help="pixels the model receives inside the hole: the original ones, as the authors' "
        "script reads them (strength < 1 keeps a faint trace), or grey (default: original)",
    )
    parser.add_argument(
        "--lpips-net",
        choices=("alex", "vgg"),
        default="alex",
        help="LPIPS backbone (default: alex)",
    )
    parser.add_argument(
        "--metrics",
        help=f"comma-separated subset of {','.join(ALL_METRICS)} (default: all)",
    )
    parser.add_argument(
        "--weights-dir",
        help="folder with the metric networks' weight files (also $MOEBIUS_WEIGHTS_DIR, then the torch hub cache)",
    )
    parser.add_argument("--offline", action="store_true", help="never download metric weights")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=100,
        help="bootstrap resamples for FID/LPIPS intervals (0 = off; default: 100)",
    )
    add_runtime_args(parser)
    add_settings_args(
        parser,
        EVAL_SETTINGS,
        "Every model runs at these settings (the official model's defaults unless given), not at "
        "its own pipeline.json defaults: a protocol compares models at the same settings.",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="TESTING ONLY: untrained metric networks (no downloads); every output is marked",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moebius.distributed import session

    with session() as world:
        return _run(args, world)


def _run(args: argparse.Namespace, world) -> int:
    from pathlib import Path

    from moebius.errors import InputError
    from moebius.eval.protocols import ALL_METRICS, get_protocol
    from moebius.eval.runner import EvalConfig, evaluate
    from moebius.runtime import apply_runtime_args, bfloat16_conversion_note
    from moebius.settings import settings_from_args

    protocol = get_protocol(args.protocol)
    settings = settings_from_args(args)
    if settings.seed is None:
        raise InputError("--seed must be a number for an evaluation (it also draws the masks)")
    runtime = apply_runtime_args(args, world)
    device = runtime.device
    conversion = bfloat16_conversion_note(device, runtime.dtype)
    if world.is_main and conversion:
        print(f"moebius eval: note: {conversion}", file=sys.stderr)
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else ALL_METRICS
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    source = args.model or args.predictions
    cfg = EvalConfig(
        protocol=protocol.name,
        images=args.images,
        out_dir=args.out or f"eval-{protocol.name}",
        masks=args.masks,
        masks_white=args.masks_white,
        predictions=args.predictions,
        model_name=args.name or Path(source.rstrip("/")).name,
        limit=args.limit,
        seed=settings.seed,
        batch_size=args.batch_size,
        settings=settings,
        hole_fill=args.hole_fill,
        lpips_net=args.lpips_net,
        metrics=metrics,
        weights_dir=args.weights_dir,
        download=False if args.offline else None,
        random_weights=args.random_weights,
        bootstrap=args.bootstrap,
        device=str(device),
    )
    pipeline = None
    if args.model:
        from moebius.pipeline import MoebiusInpaintPipeline

        pipeline = world.run_everywhere(
            lambda: MoebiusInpaintPipeline.from_pretrained(
                args.model,
                variant=args.variant or protocol.variant,
                model_config=args.model_config,
                device=device,
                dtype=runtime.dtype,
                fuse=True,  # BatchNorm folded into the projections: inference only, never saved
            ),
            main_first=True,  # a Hub download happens once
        )
    result = evaluate(cfg, pipeline, world)

    if world.is_main:
        from moebius.eval.report import markdown_table

        print(markdown_table(result))
        print(f"wrote {cfg.out_dir}/metrics.json, results.md, contact_sheet.png")
    return 0
