"""The ``moebius`` command. Each sub-command lives in ``moebius.commands.<name>`` and exposes
``register(subparsers)``; heavy imports happen inside the command, so ``--help`` is fast."""

import argparse
import importlib
import os
import sys

from moebius.errors import MoebiusError, exit_code, explain

COMMANDS = [
    "moebius.commands.inpaint",
    "moebius.commands.convert",
    "moebius.commands.eval",
    "moebius.commands.bench",
    "moebius.commands.export",
    "moebius.commands.distill",
    "moebius.commands.cache_latents",
    "moebius.commands.reproduce",
    "moebius.commands.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moebius",
        description="Fast, lightweight diffusion image inpainting (Moebius, arXiv 2606.19195).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 2 bad input or usage, 1 internal error, 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MoebiusError as exc:
        print(f"moebius {args.command}: error: {explain(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"moebius {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("MOEBIUS_DEBUG"):
            raise
        print(
            f"moebius {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(set MOEBIUS_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
