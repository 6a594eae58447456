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
both stages under bfloat16 autocast. Every ``--eval-every`` steps the held-out PSNR is also
logged, in ``OUT/NAME/vae/loss.jsonl`` and ``OUT/NAME/decoder/loss.jsonl``. The measurements
quoted at ``SMALL_VAE`` and ``train_vae`` come from this script.
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
    args = parser.parse_args()
    if not args.variant and not args.score:
        parser.error("give a --variant to train or a --score VAE directory")

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
    for vae_dir in args.score:
        print_scores(str(vae_dir), colour_errors(vae_dir, photos))
    for name, overrides in args.variant:
        out = args.out / name
        started = time.perf_counter()
        first = train_vae(
            images, out / "vae", args.vae_steps, config=SMALL_VAE | overrides, **stage_args
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
