"""``moebius cache-latents``: encode a training set once into a sharded latent cache."""

import argparse

from moebius.runtime import add_runtime_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache-latents",
        help="encode training images (and masked images) with the VAE into a latent cache",
        description="Write VARIANTS random crop/flip/mask draws per image as VAE posterior "
        "moments into OUT_DIR (safetensors shards + index.json), so `moebius distill` with "
        "data.cache: OUT_DIR never runs the VAE. Masks, and what the masked images hold in "
        "the hole (data.masked_image_fill: none, telea or ns), follow the training config's "
        "data section when --config is given.",
    )
    parser.add_argument("data", help="authors' JSONL file or an image folder")
    parser.add_argument("out_dir", help="cache directory to write")
    parser.add_argument(
        "--vae", required=True, help="diffusers AutoencoderKL directory (e.g. weight/vae)"
    )
    parser.add_argument(
        "--config",
        help="training YAML whose data section (masks, dilation, flips) and seed to use",
    )
    parser.add_argument(
        "--image-size", type=int, default=512, help="crop size in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--variants",
        type=int,
        default=8,
        help="mask/crop draws cached per image (default: %(default)s)",
    )
    parser.add_argument(
        "--shard-size", type=int, default=1024, help="images per shard (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="VAE batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--prompt",
        default="background",
        choices=["background", "foreground"],
        help="category for image-folder input (default: %(default)s)",
    )
    add_runtime_args(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffusers import AutoencoderKL

    from moebius.errors import ConfigError, InputError
    from moebius.runtime import apply_runtime_args
    from moebius.train.config import TrainConfig
    from moebius.train.data import MaskSampler, MaskSource, read_records
    from moebius.train.latent_cache import write_latent_cache

    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    d = config.data
    if args.image_size % 8 or args.variants < 1:
        raise InputError("--image-size must be a multiple of 8 and --variants at least 1")
    masks = MaskSampler(
        [MaskSource(m.kind, m.weight, m.config, tuple(m.hole_range)) for m in d.masks],
        d.dataset_mask_prob,
        tuple(d.dilate) if d.dilate else None,
    )
    runtime = apply_runtime_args(args)
    try:
        vae = AutoencoderKL.from_pretrained(
            args.vae, torch_dtype=runtime.dtype, low_cpu_mem_usage=False
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the VAE from {args.vae}: {exc}") from exc
    vae = vae.to(runtime.device).eval()
    records = read_records(args.data, args.prompt)
    index = write_latent_cache(
        records,
        vae,
        args.out_dir,
        args.image_size,
        masks,
        variants=args.variants,
        seed=config.seed,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        scaling_factor=config.scaling_factor,
        flip=d.flip,
        progress=not args.quiet,
        short_side=tuple(d.short_side) if d.short_side else None,
        masked_image_fill=d.masked_image_fill,
    )
    print(f"cached {len(records)} images × {args.variants} variants → {index}")
    return 0
