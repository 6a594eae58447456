"""``moebius distill``: latent-space multi-granularity KD of a student from a teacher."""

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a Moebius student from a teacher (single process or torchrun + DDP)",
        description="Train a student with the paper's task + fine/coarse KD + latent perceptual "
        "losses and gradient-norm adaptive weights, as configured by a training YAML (see "
        "examples/train_moebius_512.yaml and docs/training.md). For several GPUs or machines "
        "launch it with `torchrun --nproc_per_node N -m moebius.cli distill ...`.",
    )
    parser.add_argument("--config", required=True, help="training YAML file")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue from a checkpoint file, or from the newest one in OUTPUT_DIR/checkpoints "
        "when given without a value",
    )
    parser.add_argument("--output-dir", help="override output_dir from the config")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="synchronise BatchNorm statistics across processes (train.sync_bn: true)",
    )
    parser.add_argument(
        "--no-kd",
        action="store_true",
        help="the paper's no-KD baseline: task loss only, no teacher (distill.kd: false)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=5e-5 (repeatable; value is YAML)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from moebius.runtime import bfloat16_conversion_note
    from moebius.train.config import TrainConfig
    from moebius.train.trainer import Distiller

    config = TrainConfig.from_yaml(args.config)
    for item in args.set:
        config.override(item)
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.max_steps is not None:
        config.train.max_steps = args.max_steps
    if args.sync_bn:
        config.train.sync_bn = True
    if args.no_kd:
        config.distill.kd = False
    resume = True if args.resume == "latest" else args.resume
    trainer = Distiller(config, resume=resume, progress=not args.quiet)
    bfloat16 = torch.bfloat16 in (trainer.autocast_dtype, trainer.teacher_autocast_dtype)
    conversion = bfloat16_conversion_note(
        trainer.device,
        torch.bfloat16,
        advice="set train.mixed_precision: no and train.teacher_mixed_precision: no",
    )
    if bfloat16 and trainer.dist.is_main and conversion:
        print(f"moebius distill: note: {conversion}", file=sys.stderr)
    metrics = trainer.train()
    if trainer.dist.is_main:
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("loss", "task"))
        print(f"step {trainer.step}: {summary or 'done'}; weights in {config.output_dir}/final")
    return 0
