"""``moebius export onnx|openvino``: the pipeline's networks as graphs for edge runtimes."""

import argparse


def _size(text: str) -> tuple[int, int]:
    from moebius.errors import InputError

    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise InputError(f"bad --size {text!r}: use 512 or WIDTHxHEIGHT like 768x512") from None
    if len(parts) not in (1, 2):
        raise InputError(f"bad --size {text!r}: use 512 or WIDTHxHEIGHT like 768x512")
    return (parts[0], parts[-1])


def register(subparsers: argparse._SubParsersAction) -> None:
    from moebius.export.exporter import DTYPES, WEIGHTS

    parser = subparsers.add_parser(
        "export",
        help="export the student and VAE as ONNX or OpenVINO IR (runs without PyTorch)",
        description="Writes OUT_DIR/denoiser, vae_encoder and vae_decoder (.onnx, or OpenVINO "
        ".xml + .bin) and manifest.json. BatchNorm is folded and the LCG tokens of both "
        "categories are built in; batch, width and height are dynamic (multiples of the "
        "pipeline's pixel multiple, 32 for the released student). Before OUT_DIR appears the "
        "exported denoiser is run at --size against PyTorch and the difference recorded. Run "
        "the result with `moebius inpaint --backend onnxruntime|openvino --model OUT_DIR` or "
        "MoebiusInpaintPipeline.from_exported(OUT_DIR).",
    )
    parser.add_argument("format", choices=("onnx", "openvino"), help="graph format")
    parser.add_argument("out_dir", help="the export directory to write (it must not exist)")
    parser.add_argument(
        "--model",
        default="moebius-demo",
        help="what to export: a folder written by save_pretrained, a folder in the authors' "
        "layout, a Hub repo id, moebius-demo, or random:moebius-0.2b (random weights with the "
        "SDXL VAE config, for timings) (default: %(default)s)",
    )
    parser.add_argument("--variant", default="ft_places2", help="weights variant (Hub/authors)")
    parser.add_argument("--model-config", help="model preset when it cannot be guessed")
    parser.add_argument(
        "--size",
        type=_size,
        help="working size in pixels, N or WIDTHxHEIGHT, at which the export is checked "
        "against PyTorch (default: the model's own size); the graphs take other sizes too",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights' storage precision; float16 halves the files (ONNX: for GPU and NPU "
        "runtimes, the CPU runs it slowly) (default: %(default)s)",
    )
    parser.add_argument(
        "--weights",
        default="float",
        choices=WEIGHTS,
        help="int8: 8-bit weights, float arithmetic (both formats); int8-dynamic: 8-bit "
        "matrix products with activations quantised at run time (onnx); int8-static: the "
        "products with a stored weight in 8-bit arithmetic, activation scales calibrated at "
        "export on the model's own inpainting, convolutions and the λ layers' products of two "
        "activations float (openvino; a minute or more) (default: %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    parser.add_argument("--threads", type=int, help="CPU threads (default: all)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from moebius.errors import InputError
    from moebius.export.exporter import ExportOptions, export_pipeline

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    options = ExportOptions(args.format, args.dtype, args.weights, args.size)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    export_pipeline(
        args.model,
        args.out_dir,
        options,
        variant=args.variant,
        model_config=args.model_config,
        overwrite=args.overwrite,
        threads=args.threads,
        log=log,
    )
    print(f"wrote {args.out_dir}")
    return 0
