"""``moebius inpaint``: fill the masked region of one photo, or of a whole folder of photos."""

import argparse
import sys
import time
from pathlib import Path

from moebius.errors import InputError
from moebius.loading import add_backend_args
from moebius.runtime import add_runtime_args
from moebius.settings import add_settings_args, settings_from_args

RUN_FILE = "run.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inpaint",
        help="fill the masked region of a photo (or a folder of photos)",
        description="Single: moebius inpaint IMAGE MASK -o OUT.  Batch: moebius inpaint --images DIR "
        "--masks DIR --out DIR (pairs by file stem; a mask may also be named <stem>_mask). A "
        "batch records its settings in OUT/run.json; a rerun with the same settings skips the "
        "outputs that exist (an interrupted run resumes), other settings are refused unless "
        "--overwrite. Under torchrun (torchrun --nproc_per_node N -m moebius.cli inpaint "
        "--images …) the ranks share the work, with the same outputs (docs/scaling.md). "
        "Masks: white = repaint, or the opaque part of a transparent PNG; "
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
        "MoebiusInpaintPipeline.save_pretrained, moebius-demo (the small bundled model), or "
        "opencv-telea / opencv-ns (OpenCV's classical fills: instant, no weights), or with "
        "--backend onnxruntime|openvino a directory written by `moebius export`. Default "
        "'auto': the official weights (from the Hugging Face cache, or downloaded when online), "
        "else moebius-demo",
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
    from moebius.loading import load_pipeline

    def note(text: str) -> None:
        print(f"moebius inpaint: note: {text}", file=sys.stderr)

    _, pipe = load_pipeline(
        args.model, args.variant, args.model_config, runtime, note, backend=args.backend
    )
    return pipe


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
    from moebius.distributed import session
    from moebius.runtime import apply_runtime_args

    mode = _check_args(args)
    settings_from_args(args)  # bad values fail in one line before the model loads
    with session() as world:
        if mode == "single" and world.size > 1:
            raise InputError(
                "the single form (IMAGE MASK -o OUT) runs in one process; under torchrun give "
                "--images DIR --masks DIR --out DIR"
            )
        runtime = apply_runtime_args(args, world)
        if mode == "single":
            return _run_single(args, runtime)
        return _run_batch(args, runtime, world)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _run_single(args: argparse.Namespace, runtime) -> int:
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
    settings = settings_from_args(args, pipe.default_settings).with_seed()
    (result,) = _inpaint(pipe, settings, [image], [mask], [str(args.image)])
    _write(result, output, fmt)
    if not args.quiet:
        print(f"wrote {output} (seed {settings.seed}, {time.perf_counter() - start:.1f} s)")
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


def _run_record(args: argparse.Namespace, settings, runtime) -> dict:
    """What decides the outputs of a batch run, as written to OUT/run.json. The precision is
    the one ``--dtype`` resolved to (``auto`` depends on the machine): a run resumed in another
    would mix precisions in one folder."""
    return {
        "model": args.model,
        "backend": args.backend,
        "variant": args.variant,
        "model_config": args.model_config,
        "dtype": str(runtime.dtype).removeprefix("torch."),
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


def _target(args: argparse.Namespace, image: Path) -> Path:
    return args.out / f"{image.stem}.{args.ext.lstrip('.').lower()}"


def _plan(args: argparse.Namespace, settings, runtime, pairs: list) -> tuple[dict, list[range]]:
    """Rank 0 alone, before any output is written: sweep what a killed run left, check (and
    record) the settings, and list the chunks still to do."""
    from moebius.files import remove_stale_temporaries
    from moebius.work import chunks, pending

    args.out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(args.out)  # left by a run killed mid-write
    record = _check_run(args.out / RUN_FILE, _run_record(args, settings, runtime), args.overwrite)
    # fixed chunks of the sorted list: a resumed run denoises the same batches, bit for bit
    work = chunks(len(pairs), args.batch_size)
    if args.overwrite:
        return record, work
    return record, pending(work, lambda i: _target(args, pairs[i][0]).exists())


def _inpaint_chunk(
    args: argparse.Namespace, pipe, settings, members: list[tuple[Path, Path]], fmt: str
) -> tuple[int, list[tuple[str, str]]]:
    """Inpaint one chunk as one batch and write its outputs; returns (written, failures) where a
    failure is (file name, reason) for an input that cannot be used."""
    from moebius.image_io import load_image, load_mask

    chunk, images, masks, failed = [], [], [], []
    for image_path, mask_path in members:
        try:
            image = load_image(image_path)
            mask = load_mask(mask_path, invert=args.invert_mask)
        except InputError as exc:
            failed.append((image_path.name, str(exc)))
            continue
        chunk.append(image_path)
        images.append(image)
        masks.append(mask)
    if not chunk:
        return 0, failed
    try:
        results = _inpaint(pipe, settings, images, masks, [p.name for p in chunk])
    except InputError as exc:  # e.g. a size mismatch: retry one by one to isolate it
        if len(chunk) == 1:
            return 0, [*failed, (chunk[0].name, str(exc))]
        results = []
        for image, mask, path in zip(images, masks, chunk, strict=True):
            try:
                results += _inpaint(pipe, settings, [image], [mask], [path.name])
            except InputError as one:
                failed.append((path.name, str(one)))
                results.append(None)
    written = 0
    for path, result in zip(chunk, results, strict=True):
        if result is not None:
            _write(result, _target(args, path), fmt)
            written += 1
    return written, failed


def _run_batch(args: argparse.Namespace, runtime, world) -> int:
    """The batch form, in one process or as one rank of a torchrun job (the same code): rank 0
    prepares OUT, every rank inpaints its share of the chunks, rank 0 reports."""
    from moebius.settings import InpaintSettings
    from moebius.work import run_chunks

    start = time.perf_counter()
    fmt = _save_format(Path(f"x.{args.ext.lstrip('.').lower()}"))
    pairs, missing = _pairs(args)
    if not pairs and not missing:
        raise InputError(f"no images found in {args.images}")
    listing = "\n".join(f"{image}\t{mask}" for image, mask in pairs) + f"\n{missing}"
    world.require_same(listing, f"files in {args.images} and {args.masks}")
    # the model's own defaults decide the settings the run records
    pipe = world.run_everywhere(lambda: _load_pipeline(args, runtime), main_first=True)
    pipe.set_progress_bar_config(disable=True)
    settings = settings_from_args(args, pipe.default_settings)
    record, todo = world.run_on_main(lambda: _plan(args, settings, runtime, pairs))
    world.require_shared(args.out / RUN_FILE)
    settings = InpaintSettings.from_mapping(record["settings"])
    skipped = len(pairs) - sum(len(chunk) for chunk in todo)
    reports = run_chunks(
        world,
        todo,
        lambda chunk: _inpaint_chunk(args, pipe, settings, [pairs[i] for i in chunk], fmt),
        lambda chunk: ", ".join(pairs[i][0].name for i in chunk),
        total=len(pairs),
        done=skipped,
        desc="inpaint",
        quiet=args.quiet,
    )

    def summarize() -> int:
        written = sum(count for count, _ in reports)
        failed = [(name, "no mask with the same file stem") for name in missing]
        failed += [failure for _, failures in reports for failure in failures]
        elapsed = time.perf_counter() - start
        print(
            f"inpaint: {written} written, {skipped} skipped (output exists), {len(failed)} "
            f"failed in {elapsed:.1f} s -> {args.out}"
        )
        for name, reason in failed:
            print(f"  failed: {name}: {reason}", file=sys.stderr)
        return 2 if failed else 0

    return world.run_on_main(summarize)
