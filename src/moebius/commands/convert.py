"""``moebius convert``: an authors' checkpoint → our ``save_pretrained`` directory."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an authors' checkpoint (.bin/.pt/.safetensors) to a save_pretrained directory",
        description="Load CHECKPOINT strictly with --config and write OUT_DIR/config.json + "
        "OUT_DIR/model.safetensors, loadable with moebius.from_pretrained(OUT_DIR).",
    )
    parser.add_argument(
        "checkpoint", help="authors' diffusion_pytorch_model.bin, a .pt or a .safetensors file"
    )
    parser.add_argument("out_dir", help="directory to write config.json and model.safetensors into")
    parser.add_argument(
        "--config",
        default="moebius-0.2b",
        help="preset name (moebius-0.2b, pixelhacker) or an authors' YAML / config.json "
        "(default: %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moebius.models import load_model, save_pretrained

    model = load_model(args.config, args.checkpoint)
    save_pretrained(model, args.out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out_dir} ({params:,} parameters)")
    return 0
