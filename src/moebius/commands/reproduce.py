"""``moebius reproduce small``: the small-scale distillation study and the bundled demo model."""

import argparse

from moebius.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run the small-scale CPU reproduction of the paper's distillation claims",
        description="Fetch real training photographs (Debian wallpaper photos and "
        "scikit-image's, or a folder of yours), train a small VAE, a PixelHacker-shaped "
        "teacher and Moebius students (with and without distillation), evaluate them on "
        "held-out photos against OpenCV and write a report. Every stage resumes where it "
        "stopped.",
    )
    parser.add_argument("study", choices=["small"], help="which study to run (only 'small')")
    parser.add_argument(
        "--out",
        default="runs/small-scale",
        help="working directory for all stages; a run resumes there only under the training "
        "recipe it started with (recorded in its recipe.json), or stops with an error "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--photos",
        default=None,
        help="a folder of photos to use instead of fetching the Debian and scikit-image set "
        "(the last --heldout-photos of them by name are held out)",
    )
    parser.add_argument(
        "--heldout-photos",
        type=int,
        default=2,
        help="with --photos: how many photos to hold out for evaluation (default: %(default)s)",
    )
    parser.add_argument(
        "--until",
        choices=["data", "vae", "decoder", "cache", "teacher", "students", "eval"],
        default="eval",
        help="stop after this stage (default: run all and write the report); "
        "'data' only assembles the photos and their licence manifest",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every training step count (e.g. 0.01 for a smoke run)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="student seeds; each trains a KD and a no-KD student (default: 0 1 2)",
    )
    parser.add_argument(
        "--docs",
        default="docs",
        help="write small_scale.md and its images here (default: %(default)s)",
    )
    parser.add_argument(
        "--bundle",
        default=None,
        help="also save the first KD student + VAE as a pipeline directory here",
    )
    parser.add_argument(
        "--masked-image-fill",
        default="telea",
        choices=["telea", "ns", "none"],
        help="what the hole of the masked image the networks are conditioned on holds, in "
        "training and in the saved pipelines: OpenCV's Telea or Navier-Stokes fill, or zero "
        "as in the authors' model (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest for these "
        "small models when the machine is busy)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run this many of the recipe's tasks at once (the VAE's decoder, the teacher, each "
        "student, each model's evaluation fills), each as soon as what it needs is done, in "
        "separate processes that share the threads; a task that runs alone gets them all "
        "(default: 1; on 2 cores, --jobs 2 with 2 threads runs two on one core each)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from moebius.reproduce.small_scale import RecipeConfig
    from moebius.reproduce.small_scale import run as run_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    cfg = RecipeConfig(
        out=args.out,
        photos=args.photos,
        heldout_photos=args.heldout_photos,
        scale=args.scale,
        seeds=args.seeds,
        docs=args.docs,
        bundle=args.bundle,
        jobs=args.jobs,
        masked_image_fill=args.masked_image_fill,
    )
    result = run_recipe(cfg, until=args.until)
    if args.until != "eval":
        print(f"stages up to {args.until} done in {args.out}")
        return 0
    summary = result["summary"]
    print(
        f"KD masked PSNR {summary['kd_masked_psnr']['mean']:.2f} dB, "
        f"no-KD {summary['nokd_masked_psnr']['mean']:.2f} dB, "
        f"Telea {result['rows']['telea']['masked_psnr']:.2f} dB; report in {args.docs}"
    )
    return 0
