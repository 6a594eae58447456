"""``moebius inpaint``: fill the masked region of one photo, or of a whole folder of photos."""

import argparse
import sys
import time
from pathlib import Path

from moebius.errors import InputError
from moebius.export.backends import add_backend_args
from moebius.runtime import add_runtime_args
from moebius.settings import add_settings_args

RUN_FILE = "run.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inpaint",
        help="fill the masked region of a photo (or a folder of photos)",
        description="Single: moebius inpaint IMAGE MASK -o OUT.  Batch: moebius inpaint --images DIR "
        "--masks DIR --out DIR (pairs by file stem; a mask may also be named <stem>_mask). A "
        "batch records its settings in OUT/run.json; a rerun with the same settings skips the "
        "outputs that exist (an interrupted run resumes), other settings are refused unless "
        "--overwrite. Masks: white = repaint, or the opaque part of a transparent PNG; "
        "--invert-mask for black = repaint. Exit codes: 0 ok, 2 bad input or usage, 1 internal "
        "error.",
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
        "--overwrite",
        action="store_true",
        help="single: allow -o to name an input file; batch: redo every output, also when "
        "OUT holds results made with other settings",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images denoised together (default: %(default)s)"
    )
    parser.add_argument("--invert-mask", action="store_true", help="black = repaint")

    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        "--model-path",
        dest="model",
        default="auto",
        help="Hub repo id (hustvl/Moebius, hustvl/PixelHacker: downloaded when online), a folder "
        "in the authors' layout (Moebius/<variant>/ + vae/), a folder written by "
        "MoebiusInpaintPipeline.save_pretrained, or moebius-demo (the small bundled model). "
        "Default 'auto': the official weights (from the Hugging Face cache, or downloaded when "
        "online), else moebius-demo",
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
    add_backend_args(model)
    add_runtime_args(parser)
    add_settings_args(parser)
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
    from moebius.files import atomic_write

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
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    return "single" if single else "batch"


def _load_pipeline(args: argparse.Namespace, runtime):
    from moebius.export.backends import load_pipeline

    return load_pipeline(
        args.model,
        args.backend,
        variant=args.variant,
        model_config=args.model_config,
        device=runtime.device if runtime else args.device,
        dtype=runtime.dtype if runtime else args.dtype,
        threads=args.threads,
        note=lambda line: print(f"moebius inpaint: {line}", file=sys.stderr),
    )


def _inpaint(pipe, settings, images: list, masks: list, names: list[str]) -> list:
    """Run the pipeline; its warnings (empty masks) become one line per image on stderr."""
    out = pipe(images, masks, settings=settings)
    for warning in out.warnings:
        print(
            f"moebius inpaint: warning: {names[warning.index]}: {warning.message}",
            file=sys.stderr,
        )
    return out.images


def run(args: argparse.Namespace) -> int:
    from moebius.runtime import apply_runtime_args
    from moebius.settings import settings_from_args

    mode = _check_args(args)
    settings = settings_from_args(args)
    # the exported backends configure their runtime themselves, without PyTorch
    runtime = apply_runtime_args(args) if args.backend == "torch" else None
    if mode == "single":
        return _run_single(args, settings, runtime)
    return _run_batch(args, settings, runtime)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _run_single(args: argparse.Namespace, settings, runtime) -> int:
    from moebius.image_io import load_image, load_mask

    output = Path(args.output)
    fmt = _save_format(output)
    for given, what in ((args.image, "input photo"), (args.mask, "mask")):
        if not args.overwrite and _same_file(output, Path(given)):
            raise InputError(
                f"-o {output} is the {what}; choose another output or pass --overwrite"
            )
    image = load_image(args.image)
    mask = load_mask(args.mask, invert=args.invert_mask)
    start = time.perf_counter()
    pipe = _load_pipeline(args, runtime)
    pipe.set_progress_bar_config(disable=args.quiet)
    (result,) = _inpaint(pipe, settings.with_seed(), [image], [mask], [str(args.image)])
    _write(result, output, fmt)
    if not args.quiet:
        print(f"wrote {output} ({time.perf_counter() - start:.1f} s)")
    return 0


def _pairs(args: argparse.Namespace) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(image, mask) pairs by stem, and the images that have no mask."""
    from moebius.image_io import list_images

    masks: dict[str, Path] = {}
    for path in list_images(args.masks):
        masks.setdefault(path.stem, path)
    pairs, missing, seen = [], [], {}
    for path in list_images(args.images):
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


def _run_record(args: argparse.Namespace, settings) -> dict:
    """What decides the outputs of a batch run, as written to OUT/run.json."""
    return {
        "model": args.model,
        "backend": args.backend,
        "variant": args.variant,
        "model_config": args.model_config,
        "dtype": args.dtype,
        "invert_mask": args.invert_mask,
        "ext": args.ext.lstrip(".").lower(),
        "settings": settings.to_dict(),
    }


def _check_run(path: Path, record: dict, overwrite: bool) -> dict:
    """The record to write: refuse a folder made with other settings unless ``overwrite``. A
    random seed (``--seed random``) reuses the one the folder was made with."""
    import json

    from moebius.files import write_json

    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
        previous.setdefault("backend", "torch")  # folders made before backends existed
        if record["settings"]["seed"] is None and "settings" in previous:
            record["settings"]["seed"] = previous["settings"].get("seed")
        changed = [k for k in record if k != "settings" and previous.get(k) != record[k]]
        before = previous.get("settings", {})
        changed += [k for k in record["settings"] if before.get(k) != record["settings"][k]]
        if changed and not overwrite:
            detail = ", ".join(
                f"{k}: {before.get(k, previous.get(k))!r} -> "
                f"{record['settings'].get(k, record.get(k))!r}"
                for k in changed
            )
            raise InputError(
                f"{path.parent} holds results made with other settings ({detail}); pass "
                "--overwrite to redo them all, or choose another --out"
            )
    if record["settings"]["seed"] is None:
        import secrets

        record["settings"]["seed"] = secrets.randbelow(2**32)
    write_json(path, record)
    return record


def _run_batch(args: argparse.Namespace, settings, runtime) -> int:
    from tqdm.auto import tqdm

    from moebius.files import remove_stale_temporaries
    from moebius.image_io import load_image, load_mask
    from moebius.settings import InpaintSettings
    from moebius.work import chunks, pending

    start = time.perf_counter()
    ext = args.ext.lstrip(".").lower()
    fmt = _save_format(Path(f"x.{ext}"))
    pairs, missing = _pairs(args)
    if not pairs and not missing:
        raise InputError(f"no images found in {args.images}")
    args.out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(args.out)  # left by a run killed mid-write
    record = _check_run(args.out / RUN_FILE, _run_record(args, settings), args.overwrite)
    settings = InpaintSettings.from_mapping(record["settings"])

    def target(path: Path) -> Path:
        return args.out / f"{path.stem}.{ext}"

    # fixed chunks of the sorted list: a resumed run denoises the same batches, bit for bit
    work = chunks(len(pairs), args.batch_size)
    todo = work if args.overwrite else pending(work, lambda i: target(pairs[i][0]).exists())
    skipped = len(pairs) - sum(len(chunk) for chunk in todo)
    failed = [(name, "no mask with the same file stem") for name in missing]
    written = 0
    pipe = _load_pipeline(args, runtime) if todo else None
    with tqdm(total=len(pairs) - skipped, unit="img", desc="inpaint", disable=args.quiet) as bar:
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
        for chunk_indices in todo:
            chunk, images, masks = [], [], []
            for image_path, mask_path in (pairs[i] for i in chunk_indices):
                try:
                    image = load_image(image_path)
                    mask = load_mask(mask_path, invert=args.invert_mask)
                except InputError as exc:
                    failed.append((image_path.name, str(exc)))
                    bar.update(1)
                    continue
                chunk.append(image_path)
                images.append(image)
                masks.append(mask)
            if not chunk:
                continue
            try:
                results = _inpaint(pipe, settings, images, masks, [p.name for p in chunk])
            except InputError as exc:  # e.g. a size mismatch: retry one by one to isolate it
                if len(chunk) == 1:
                    failed.append((chunk[0].name, str(exc)))
                    bar.update(1)
                    continue
                results = []
                for image, mask, path in zip(images, masks, chunk, strict=True):
                    try:
                        results += _inpaint(pipe, settings, [image], [mask], [path.name])
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
