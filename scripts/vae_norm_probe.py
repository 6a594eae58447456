"""Does the small VAE's GroupNorm cost it the photo's overall colour?

GroupNorm takes each group's mean and variance over the whole image away, and the decoder's
last norm has nothing after it but a SiLU and the 3-channel convolution: with the recipe's
eight groups of two channels at that 16-channel level, an image-wide colour is left to the
relations inside each pair. This trains the recipe's VAE and decoder stages (same photos, seed,
crops and steps) once per requested group count, one thread each, and prints the held-out
reconstruction PSNR after each stage and each held-out photo's PSNR and mean colour error
(decoded − photo, R G B, 0–255).

    python scripts/vae_norm_probe.py --groups 1 8 --run runs/small-scale --out runs/vae-norm-probe

``--run`` is a finished ``moebius reproduce small`` run, for its photos. The numbers quoted at
``moebius.reproduce.vae_training.SMALL_VAE`` come from this script at the recipe's published
scale (``--vae-steps 1500 --decoder-steps 2000``, the defaults): one group helped after the VAE
stage and not after the decoder stage, so the recipe keeps eight.
"""

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--run", type=Path, default=Path("runs/small-scale"))
    parser.add_argument("--out", type=Path, default=Path("runs/vae-norm-probe"))
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--decoder-steps", type=int, default=2000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    images = [Image.open(p).convert("RGB") for p in _training_photos(args.run)]
    photos = heldout_photos(args.run)
    recipe = RecipeConfig()  # as the recipe's VAE stages are given them
    stage_args = {
        "size": recipe.vae_crop,
        "batch": recipe.batch_size,
        "short_sides": tuple(recipe.short_side),
        "heldout": list(photos.values()),
    }
    for groups in args.groups:
        out = args.out / f"groups-{groups}"
        config = SMALL_VAE | {"norm_num_groups": groups}
        first = train_vae(images, out / "vae", args.vae_steps, config=config, **stage_args)
        second = finetune_decoder(
            out / "vae" / "vae", images, out / "decoder", args.decoder_steps, **stage_args
        )
        report = {
            "norm_num_groups": groups,
            "vae_stage_db": round(first["heldout_psnr_db"], 2),
            "decoder_stage_db": round(second["heldout_psnr_db"], 2),
            "photos": colour_errors(out / "decoder" / "vae", photos),
        }
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        print(
            f"{groups} group(s): held out {report['vae_stage_db']} dB after the VAE stage,"
            f" {report['decoder_stage_db']} dB after the decoder stage",
            flush=True,
        )
        for name, row in report["photos"].items():
            print(f"  {name:16s} {row['psnr_db']:6.2f} dB  mean error {row['mean_error_rgb']}")


if __name__ == "__main__":
    main()
