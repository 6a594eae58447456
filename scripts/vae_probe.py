"""Train the small VAE's two stages under a few configurations and compare them held out.

Each ``--variant NAME=JSON`` overrides keys of ``moebius.reproduce.vae_training.SMALL_VAE``
(``base={}`` is the recipe's own). Every variant trains the recipe's VAE and decoder stages on
the same photos, seed, crops and steps, one thread each, and the script prints the held-out
reconstruction PSNR after each stage, the stages' minutes and each held-out photo's PSNR and
mean colour error (decoded − photo, R G B, 0–255), and writes ``OUT/NAME/report.json``.

    python scripts/vae_probe.py --run runs/small-scale --out runs/vae-probe \
        --variant base={} --variant 'groups-1={"norm_num_groups": 1}'

``--run`` is a ``moebius reproduce small`` run that has at least its ``data`` stage, for the
photos. ``--decoder-steps 0`` stops each variant after the first stage. The measurements quoted
at ``SMALL_VAE`` come from this script.
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
    """Each photo's reconstruction PSNR and mean error per channel (decoded − photo, 0–255)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval()
    rows = {}
    for name, photo in photos.items():
        error = reconstruct(vae, photo)[0].permute(1, 2, 0).numpy() - photo
        rows[name] = {
            "psnr_db": round(float(10 * np.log10(255.0**2 / np.square(error).mean())), 2),
            "mean_error_rgb": [round(float(e), 1) for e in error.reshape(-1, 3).mean(0)],
        }
    return rows


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
    parser.add_argument("--variant", type=parse_variant, action="append", required=True)
    parser.add_argument("--run", type=Path, default=Path("runs/small-scale"))
    parser.add_argument("--out", type=Path, default=Path("runs/vae-probe"))
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--decoder-steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images = [Image.open(p).convert("RGB") for p in _training_photos(args.run)]
    photos = heldout_photos(args.run)
    recipe = RecipeConfig()  # as the recipe's VAE stages are given them
    stage_args = {
        "size": recipe.vae_crop,
        "batch": recipe.batch_size,
        "short_sides": tuple(recipe.short_side),
        "heldout": list(photos.values()),
    }
    for name, overrides in args.variant:
        out = args.out / name
        started = time.perf_counter()
        first = train_vae(
            images, out / "vae", args.vae_steps, config=SMALL_VAE | overrides, **stage_args
        )
        report = {
            "overrides": overrides,
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
        for photo, row in report["photos"].items():
            print(f"  {photo:16s} {row['psnr_db']:6.2f} dB  mean error {row['mean_error_rgb']}")


if __name__ == "__main__":
    main()
