"""Train the small VAE's two stages under a few configurations and compare them held out.

Each ``--variant NAME=JSON`` overrides keys of ``moebius.reproduce.vae_training.SMALL_VAE``
(``base={}`` is the recipe's own). Every variant trains the recipe's VAE and decoder stages on
the same photos, seed, crops and steps (on ``--threads``, 1 by default), and the script
prints the held-out reconstruction PSNR after each stage, the stages' minutes, and each
held-out photo's PSNR, its mean colour error (decoded − photo, R G B, 0–255) and the PSNR
left with that mean error taken away; it writes ``OUT/NAME/report.json``.
``--score DIR`` scores a VAE already trained (a diffusers directory) the same way.

    python scripts/vae_probe.py --run runs/small-scale --out runs/vae-probe \
        --variant base={} --variant 'groups-1={"norm_num_groups": 1}'
    python scripts/vae_probe.py --run runs/small-scale --score src/moebius/assets/moebius-demo/vae

``--run`` is a ``moebius reproduce small`` run that has at least its ``data`` stage, for the
photos. ``--decoder-steps 0`` stops each variant after the first stage; ``--bfloat16`` trains
both stages under bfloat16 autocast; ``--anchor-weight`` sets the first stage's colour anchor
(the recipe's 2; 0 trains on reconstruction alone). ``--pca K`` prints, for 1 … K numbers
per 8×8 block, the held-out PSNR of a linear code (each block's principal components, fitted
on the training photos): what a code of the VAE's size reaches without any nonlinearity.
Every ``--eval-every`` steps the held-out PSNR is also logged, in ``OUT/NAME/vae/loss.jsonl``
and ``OUT/NAME/decoder/loss.jsonl``. The measurements quoted at ``SMALL_VAE`` and
``train_vae`` come from this script.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moebius.reproduce.small_scale import RecipeConfig, _training_photos, heldout_photos
from moebius.reproduce.vae_training import SMALL_VAE, finetune_decoder, reconstruct, train_vae


@torch.no_grad()
def colour_errors(vae_dir: Path, photos: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each photo's reconstruction PSNR, its mean error per channel (decoded − photo, 0–255) and
    the PSNR left with that mean error taken away (what the photo's colour cast costs)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).float().eval()
    rows = {}
    for name, photo in photos.items():
        decoded = reconstruct(vae, photo)[0].permute(1, 2, 0).numpy()
        mean_error = (decoded - photo).reshape(-1, 3).mean(0)
        rows[name] = {
            "psnr_db": round(_psnr(decoded, photo), 2),
            "mean_error_rgb": [round(float(e), 1) for e in mean_error],
            "psnr_without_mean_error_db": round(
                _psnr(np.clip(decoded - mean_error, 0, 255), photo), 2
            ),
        }
    return rows


def blockwise_pca_psnr(
    images: list[Image.Image], photos: dict[str, np.ndarray], components: int, block: int = 8
) -> float:
    """Mean held-out PSNR of a linear code with the VAE's budget: each photo cut into
    ``block``² squares (the VAE's downsampling), each square kept as its first ``components``
    principal components, fitted on the training photos at a 512-px short side."""

    def squares(pixels: np.ndarray) -> np.ndarray:
        h, w = (side // block * block for side in pixels.shape[:2])
        cut = pixels[:h, :w].astype(np.float64).reshape(h // block, block, w // block, block, 3)
        return cut.transpose(0, 2, 1, 3, 4).reshape(-1, block * block * 3)

    def at_512(image: Image.Image) -> np.ndarray:
        scale = 512 / min(image.size)
        return np.asarray(image.resize([round(side * scale) for side in image.size]))

    training = np.concatenate([squares(at_512(image)) for image in images])
    mean = training.mean(0)
    basis = np.linalg.svd(training - mean, full_matrices=False)[2][:components]
    values = []
    for photo in photos.values():
        target = squares(photo)
        kept = np.round(np.clip((target - mean) @ basis.T @ basis + mean, 0, 255))
        values.append(_psnr(kept, target))
    return float(np.mean(values))


def _psnr(decoded: np.ndarray, photo: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.square(decoded - photo).mean()))


def print_scores(name: str, photos: dict[str, dict]) -> None:
    for photo, row in photos.items():
        print(
            f"  {photo:16s} {row['psnr_db']:6.2f} dB  mean error {row['mean_error_rgb']}"
            f"  without it {row['psnr_without_mean_error_db']:6.2f} dB"
        )
    means = [
        np.mean([row[key] for row in photos.values()])
        for key in ("psnr_db", "psnr_without_mean_error_db")
    ]
    print(f"{name}: mean {means[0]:.2f} dB, {means[1]:.2f} dB without each photo's mean error")


def parse_variant(text: str) -> tuple[str, dict]:
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        config = json.loads(overrides)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{name}: not JSON ({error})") from None
    if not isinstance(config, dict):
        raise argparse.ArgumentTypeError(f"{name}: expected a JSON object of SMALL_VAE keys")
    unknown = set(config) - set(SMALL_VAE)
    if unknown:
        raise argparse.ArgumentTypeError(f"{name}: not SMALL_VAE keys: {sorted(unknown)}")
    return name, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", type=parse_variant, action="append", default=[])
    parser.add_argument("--score", type=Path, action="append", default=[])
    parser.add_argument("--run", type=Path, default=Path("runs/small-scale"))
    parser.add_argument("--out", type=Path, default=Path("runs/vae-probe"))
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--decoder-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bfloat16", action="store_true")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--anchor-weight", type=float, default=2.0)
    parser.add_argument("--pca", type=int, default=0, metavar="K")
    args = parser.parse_args()
    if not (args.variant or args.score or args.pca):
        parser.error("give a --variant to train, a --score VAE directory or --pca K")

    torch.set_num_threads(args.threads)
    images = [Image.open(p).convert("RGB") for p in _training_photos(args.run)]
    photos = heldout_photos(args.run)
    recipe = RecipeConfig()  # as the recipe's VAE stages are given them
    stage_args = {
        "size": recipe.vae_crop,
        "batch": recipe.batch_size,
        "short_sides": tuple(recipe.short_side),
        "heldout": list(photos.values()),
        "bf16": args.bfloat16,
        "eval_every": args.eval_every,
    }
    if args.pca:
        for components in range(1, args.pca + 1):
            psnr = blockwise_pca_psnr(images, photos, components)
            print(f"linear code, {components} numbers per 8x8 square: held out {psnr:.2f} dB")
    for vae_dir in args.score:
        print_scores(str(vae_dir), colour_errors(vae_dir, photos))
    for name, overrides in args.variant:
        out = args.out / name
        started = time.perf_counter()
        first = train_vae(
            images,
            out / "vae",
            args.vae_steps,
            config=SMALL_VAE | overrides,
            anchor_weight=args.anchor_weight,
            **stage_args,
        )
        report = {
            "overrides": overrides,
            "bfloat16": args.bfloat16,
            "parameters": first["parameters"],
            "vae_stage_db": round(first["heldout_psnr_db"], 2),
            "vae_stage_minutes": round((time.perf_counter() - started) / 60, 1),
        }
        trained = out / "vae" / "vae"
        if args.decoder_steps:
            started = time.perf_counter()
            second = finetune_decoder(
                trained, images, out / "decoder", args.decoder_steps, **stage_args
            )
            report["decoder_stage_db"] = round(second["heldout_psnr_db"], 2)
            report["decoder_stage_minutes"] = round((time.perf_counter() - started) / 60, 1)
            trained = out / "decoder" / "vae"
        report["photos"] = colour_errors(trained, photos)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        stages = f"{report['vae_stage_db']} dB after the VAE stage"
        if "decoder_stage_db" in report:
            stages += f", {report['decoder_stage_db']} dB after the decoder stage"
        print(f"{name} ({report['parameters'] / 1e6:.2f} M): held out {stages}", flush=True)
        print_scores(name, report["photos"])


if __name__ == "__main__":
    main()
