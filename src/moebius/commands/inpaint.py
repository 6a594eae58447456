"""``moebius inpaint``: fill the masked region of one photo, or of a whole folder of photos."""

import argparse
import sys
import time
import warnings
from pathlib import Path

from moebius.commands import resolve_device
from moebius.errors import InputError

DTYPES = ("float32", "float16", "bfloat16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inpaint",
        help="fill the masked region of a photo (or a folder of photos)",
        description="Single: moebius inpaint IMAGE MASK -o OUT.  Batch: moebius inpaint --images DIR "
        "--masks DIR --out DIR (pairs by file stem; a mask may also be named <stem>_mask; "
        "outputs that already exist are skipped, so an interrupted run resumes). Masks: white "
        "= repaint, or the opaque part of a transparent PNG; --invert-mask for black = repaint. "
        "Exit codes: 0 ok, 2 bad input or usage, 1 internal error.",
    )
    parser.add_argument("image", nargs="?", help="input photo (any size, any common format)")
    parser.add_argument("mask", nargs="?", help="mask image (white = repaint)")
    parser.add_argument(
        "-o", "--output", help="output file for the single form (.png, .jpg, .webp …)"
    )
    parser.add_argument("--images", type=Path, help="batch: folder of input photos")
    parser.add_argument("--masks", type=Path, help="batch: folder of masks, same file stems")
    parser.add_argument("--out", type=Path, help="batch: output folder")
    parser.add_argument(
        "--ext", default="png", help="batch: output format/extension (default: %(default)s)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="batch: redo outputs that already exist"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images denoised together (default: %(default)s)"
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "--model-path",
        dest="model",
        default="auto",
        help="Hub repo id (hustvl/Moebius, hustvl/PixelHacker: downloaded when online), a folder "
        "in the authors' layout (Moebius/<variant>/ + vae/), a folder written by "
        "MoebiusInpaintPipeline.save_pretrained, or moebius-demo (the small bundled model). "
        "Default 'auto': hustvl/Moebius if it is in the Hugging Face cache, else moebius-demo",
    )
    model.add_argument(
        "--variant",
        default="ft_places2",
        help="weights variant: pretrained, ft_places2, ft_celebahq, ft_ffhq (default: %(default)s)",
    )
    model.add_argument(
        "--model-config",
        help="model preset or authors' YAML when it cannot be guessed from the folder name",
    )
    model.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="default: auto"
    )
    model.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the networks (default: PyTorch's, usually one per core)",
    )
    model.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="weights' precision; bfloat16/float16 run under autocast, faster on GPUs and on "
        "CPUs with bfloat16 instructions (AVX-512 BF16, AMX) (default: float32)",
    )

    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    sampling.add_argument(
        "--guidance", type=float, default=2.5, help="LCG guidance scale (default: 2.5)"
    )
    sampling.add_argument(
        "--strength", type=float, default=0.99, help="denoising strength in (0, 1] (default: 0.99)"
    )
    sampling.add_argument(
        "--noise-offset", type=float, default=0.0357, help="noise offset (default: 0.0357)"
    )
    sampling.add_argument(
        "--seed", type=int, default=0, help="random seed, reset for every call (default: 0)"
    )
    sampling.add_argument(
        "--scheduler", default="ddim", choices=("ddim", "dpm++"), help="default: ddim"
    )
    sampling.add_argument(
        "--category",
        default="background",
        choices=("background", "foreground"),
        help="fill with scene (background: object removal) or with an object (default: background)",
    )

    pre = parser.add_argument_group("image handling")
    pre.add_argument(
        "--strategy",
        default="auto",
        choices=("auto", "resize", "crop", "original"),
        help="resize: short side to the model size; crop: inpaint a padded box around the mask "
        "and paste it back; original: the photo's own resolution; auto: crop for photos over "
        "1.5x the model size, else resize (default: auto)",
    )
    pre.add_argument(
        "--crop-padding",
        type=int,
        default=64,
        help="crop: context pixels around the mask (default: 64)",
    )
    pre.add_argument(
        "--image-size", type=int, help="working size in pixels (default: the model's, 512)"
    )
    pre.add_argument(
        "--dilation", type=int, default=0, help="dilate the mask by a k x k square (default: 0)"
    )
    pre.add_argument("--invert-mask", action="store_true", help="black = repaint")
    pre.add_argument(
        "--resize-mask", action="store_true", help="resize a mask whose size differs from the image"
    )
    pre.add_argument(
        "--no-paste-back",
        action="store_true",
        help="keep the model's output everywhere instead of blending it into the original",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _save_format(path: Path) -> str:
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(
            f"cannot write {path}: unknown image extension {path.suffix or '(none)'!r}"
        )
    return fmt


def _write(image, path: Path, fmt: str) -> None:
    from moebius.models.checkpoint import atomic_write

    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **options))


def _check_args(args: argparse.Namespace) -> str:
    single = args.image is not None or args.mask is not None or args.output is not None
    batch = args.images is not None or args.masks is not None or args.out is not None
    if single == batch:
        raise InputError("give either IMAGE MASK -o OUT or --images DIR --masks DIR --out DIR")
    if single and (args.image is None or args.mask is None or args.output is None):
        raise InputError("the single form needs IMAGE, MASK and -o OUT")
    if batch and (args.images is None or args.masks is None or args.out is None):
        raise InputError("the batch form needs --images, --masks and --out")
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--threads": args.threads}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    if not 0 < args.strength <= 1:
        raise InputError(f"--strength must be in (0, 1], got {args.strength}")
    if args.dilation < 0 or args.crop_padding < 0:
        raise InputError("--dilation and --crop-padding must not be negative")
    if args.image_size is not None and (args.image_size < 64 or args.image_size % 64):
        raise InputError(f"--image-size must be a positive multiple of 64, got {args.image_size}")
    return "single" if single else "batch"


def _load_pipeline(args: argparse.Namespace):
    import torch
    from diffusers.utils import logging as diffusers_logging

    from moebius.allocator import keep_freed_memory
    from moebius.pipeline import MoebiusInpaintPipeline

    diffusers_logging.set_verbosity_error()  # its load-time advice is not for our users

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise InputError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")
    if device.type == "cpu":
        keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model
    if model == "auto":
        from moebius.weights import default_model

        model, note = default_model(args.variant)
        if note:
            print(f"moebius inpaint: note: {note}", file=sys.stderr)
    pipe = MoebiusInpaintPipeline.from_pretrained(
        model,
        variant=args.variant,
        model_config=args.model_config,
        scheduler=args.scheduler,
        device=device,
        dtype=dtype,
    )
    pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
    return pipe


def _inpaint(pipe, args: argparse.Namespace, images: list, masks: list, names: list[str]) -> list:
    """Run the pipeline; its warnings (empty masks) become one line per image on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pipe(
            images,
            masks,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=args.seed,
            strength=args.strength,
            noise_offset=args.noise_offset,
            category=args.category,
            mask_dilation=args.dilation,
            paste_back=not args.no_paste_back,
            strategy=args.strategy,
            image_size=args.image_size,
            resize_mask=args.resize_mask,
            crop_padding=args.crop_padding,
        )
    for warning in caught:
        message = str(warning.message)
        if message.startswith("image ") and ":" in message:
            index, message = message[len("image ") :].split(":", 1)
            if index.isdigit():
                message = f"{names[int(index)]}:{message}"
        print(f"moebius inpaint: warning: {message.strip()}", file=sys.stderr)
    return out.images


def run(args: argparse.Namespace) -> int:
    mode = _check_args(args)
    return _run_single(args) if mode == "single" else _run_batch(args)


def _run_single(args: argparse.Namespace) -> int:
    from moebius.image_io import load_image, load_mask

    output = Path(args.output)
    fmt = _save_format(output)
    image = load_image(args.image)
    mask = load_mask(args.mask, invert=args.invert_mask)
    start = time.perf_counter()
    pipe = _load_pipeline(args)
    pipe.set_progress_bar_config(disable=args.quiet)
    (result,) = _inpaint(pipe, args, [image], [mask], [str(args.image)])
    _write(result, output, fmt)
    if not args.quiet:
        print(f"wrote {output} ({time.perf_counter() - start:.1f} s)")
    return 0


def _pairs(args: argparse.Namespace) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, mask) pairs by stem, and the images that have no mask."""
    from moebius.image_io import IMAGE_EXTENSIONS

    for folder in (args.images, args.masks):
        if not folder.is_dir():
            raise InputError(f"not a folder: {folder}")

    def listing(folder: Path) -> list[Path]:
        return sorted(
            p
            for p in folder.iterdir()
            # dotfiles are editor/OS debris (macOS "._x.jpg") or our own temp files
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )

    masks: dict[str, Path] = {}
    for path in listing(args.masks):
        masks.setdefault(path.stem, path)
    pairs, missing, seen = [], [], {}
    for path in listing(args.images):
        if path.stem in seen:
            raise InputError(
                f"{path.name} and {seen[path.stem].name} would write the same output; rename one"
            )
        seen[path.stem] = path
        mask = masks.get(path.stem) or masks.get(f"{path.stem}_mask")
        if mask is None:
            missing.append(path.name)
        else:
            pairs.append((path, mask))
    return pairs, missing


def _run_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from moebius.image_io import load_image, load_mask

    start = time.perf_counter()
    ext = args.ext.lstrip(".").lower()
    fmt = _save_format(Path(f"x.{ext}"))
    pairs, missing = _pairs(args)
    if not pairs and not missing:
        raise InputError(f"no images found in {args.images}")
    args.out.mkdir(parents=True, exist_ok=True)
    # temp files of a run that was killed mid-write; the finished outputs are always complete
    for stale in args.out.glob(f".*.{ext}.*.tmp"):
        stale.unlink(missing_ok=True)

    def target(path: Path) -> Path:
        return args.out / f"{path.stem}.{ext}"

    todo = [p for p in pairs if args.overwrite or not target(p[0]).exists()]
    skipped = len(pairs) - len(todo)
    failed = [(name, "no mask with the same file stem") for name in missing]
    written = 0
    pipe = _load_pipeline(args) if todo else None
    with tqdm(total=len(todo), unit="img", desc="inpaint", disable=args.quiet) as bar:
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
        for first in range(0, len(todo), args.batch_size):
            chunk, images, masks = [], [], []
            for image_path, mask_path in todo[first : first + args.batch_size]:
                try:
                    images.append(load_image(image_path))
                    masks.append(load_mask(mask_path, invert=args.invert_mask))
                except InputError as exc:
                    images = images[: len(chunk)]
                    failed.append((image_path.name, str(exc)))
                    bar.update(1)
                    continue
                chunk.append(image_path)
            if not chunk:
                continue
            try:
                results = _inpaint(pipe, args, images, masks, [p.name for p in chunk])
            except InputError as exc:  # e.g. a size mismatch: retry one by one to isolate it
                if len(chunk) == 1:
                    failed.append((chunk[0].name, str(exc)))
                    bar.update(1)
                    continue
                results = []
                for image, mask, path in zip(images, masks, chunk, strict=True):
                    try:
                        results += _inpaint(pipe, args, [image], [mask], [path.name])
                    except InputError as one:
                        failed.append((path.name, str(one)))
                        results.append(None)
            for path, result in zip(chunk, results, strict=True):
                if result is not None:
                    _write(result, target(path), fmt)
                    written += 1
                bar.update(1)

    elapsed = time.perf_counter() - start
    print(
        f"inpaint: {written} written, {skipped} skipped (output exists), {len(failed)} failed "
        f"in {elapsed:.1f} s -> {args.out}"
    )
    for name, reason in failed:
        print(f"  failed: {name}: {reason}", file=sys.stderr)
    return 2 if failed else 0
