"""Write README's numbers on the bundled demo model and the small-scale run from that run's
result, kept as docs/small_scale.json by `moebius reproduce small`.

    python scripts/update_readme_small_scale.py           # rewrite the sections in README.md
    python scripts/update_readme_small_scale.py --check   # exit 1 if README.md is out of date

Two sections are rendered: the offline default's paragraph (between the ``demo:`` markers) and
the run's summary in the small-scale section (between the ``small-scale:`` markers), so the
README cannot quote a run other than the one the report and the bundled model come from.
"""

import argparse
import json
import sys
from pathlib import Path

from readme_sections import README, with_section, write_or_check

from moebius.cpu import describe_cpu
from moebius.reproduce.small_scale import DEMO_ROW, distillation_effect, wall_clock_text
from moebius.settings import InpaintSettings, as_options

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "docs" / "small_scale.json"
SCRIPT = Path(__file__).name
SECTIONS = ("demo", "small-scale")


def _against_telea(summary: dict, row: str, digits: int = 1) -> str:
    """``2.7 dB below`` (or above) Telea, from the row's paired difference."""
    difference = summary[f"{row}_minus_telea_psnr"]["mean"]
    return f"{abs(difference):.{digits}f} dB {'below' if difference < 0 else 'above'}"


def _interval(entry: dict) -> str:
    low, high = entry["interval"]
    return f"95 % interval {low:+.2f} to {high:+.2f} dB"


def render_demo(result: dict) -> str:
    cfg, rows, summary = result["config"], result["rows"], result["summary"]
    demo, stages, data = cfg["demo_settings"], result["stages"], result["data"]
    steps = InpaintSettings.from_mapping(demo).denoising_steps
    cases, photos = len(result["cases"]), data["heldout_photos"]
    return (
        f"The demo model is tiny ({rows[DEMO_ROW]['parameters'] / 1e6:.2f}M-parameter student +"
        f" {stages['vae']['parameters'] / 1e6:.1f}M-parameter VAE, trained on a"
        f" {result['threads']}-core CPU on {data['train_photos']} photographs whose licences"
        " allow it, see [docs/small_scale.md](docs/small_scale.md)). Painting from pure noise,"
        f" its fills score {_against_telea(summary, result['demo_model'])} OpenCV Telea's in"
        f" masked PSNR on {cases} held-out cases ({photos} photos × {cases // photos} mask"
        " widths); by default it starts from Telea's fill of the hole, noised, and refines it"
        f" (its own defaults: `{as_options({k: v for k, v in demo.items() if k != 'steps'})}`,"
        f" {steps} denoising steps):"
        f" {_against_telea(summary, DEMO_ROW, digits=2)} Telea"
        f" ({_interval(summary[f'{DEMO_ROW}_minus_telea_psnr'])}),"
        f" {result['inpaint_seconds']['demo']:.1f} s for one {cfg['eval_size']} px inpaint on"
        f" {result['threads']} cores ({describe_cpu(result['machine'])})."
    )


def render_run(result: dict) -> str:
    cfg, rows, summary, stages = (result[k] for k in ("config", "rows", "summary", "stages"))
    difference = summary["kd_minus_nokd_masked_psnr"]
    verdict = distillation_effect(summary) or "made no difference the intervals can tell"
    command = (
        f"moebius reproduce small --scale {cfg['scale']:g} --jobs {cfg['jobs']}"
        f" --threads {result['threads']}" + (f" --bundle {cfg['bundle']}" if cfg["bundle"] else "")
    )
    return (
        "The report in [docs/small_scale.md](docs/small_scale.md) and the bundled `moebius-demo`"
        f" come from a run of it (`{command}`). On {result['threads']} cores of an"
        f" {describe_cpu(result['machine'])} it took {wall_clock_text(result)}; the VAE"
        f" reconstructs held-out photos at {stages['vae']['heldout_psnr_db']:.1f} dB,"
        f" {stages['decoder']['heldout_psnr_db']:.1f} dB after the decoder stage. On {len(result['cases'])} held-out cases the students"
        f" score {summary['kd_masked_psnr']['mean']:.1f} dB of masked PSNR (KD) and"
        f" {summary['nokd_masked_psnr']['mean']:.1f} dB (no-KD) against OpenCV Telea's"
        f" {rows['telea']['masked_psnr']:.1f} dB, and distillation {verdict}"
        f" ({difference['mean']:+.2f} dB, {_interval(difference)}); the bundled demo at its own"
        f" defaults (a Telea fill refined) scores {rows[DEMO_ROW]['masked_psnr']:.1f} dB."
    )


def update(text: str, result: dict) -> str:
    for section, body in zip(SECTIONS, (render_demo(result), render_run(result)), strict=True):
        text = with_section(text, section, SCRIPT, body)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README is out of date")
    args = parser.parse_args()
    updated = update(README.read_text(), json.loads(RESULT.read_text()))
    return write_or_check(updated, args.check, SCRIPT)


if __name__ == "__main__":
    sys.exit(main())
