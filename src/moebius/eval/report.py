"""What an evaluation run leaves behind: metrics.json, a markdown table row, a contact sheet."""

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from moebius.files import atomic_write

COLUMNS = [
    ("fid", "FID↓", "{:.2f}"),
    ("lpips", "LPIPS↓", "{:.3f}"),
    ("u_ids", "U-IDS↑", "{:.3f}"),
    ("p_ids", "P-IDS↑", "{:.3f}"),
    ("psnr", "PSNR↑", "{:.2f}"),
    ("ssim", "SSIM↑", "{:.4f}"),
    ("psnr_hole", "PSNR hole↑", "{:.2f}"),
    ("ssim_hole", "SSIM hole↑", "{:.4f}"),
]


def json_safe(value):
    """NaN (e.g. SSIM of an empty hole) and ∞ (PSNR of identical images) become null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _cell(key: str, fmt: str, metrics: dict, intervals: dict) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = fmt.format(value)
    if key in intervals:
        low, high = intervals[key]
        text += f" [{fmt.format(low)}, {fmt.format(high)}]"
    return text


def markdown_table(result: dict) -> str:
    """Header, the paper's Moebius row for this protocol, and this run's row."""
    header = "| model | protocol | images | " + " | ".join(c[1] for c in COLUMNS) + " |"
    rule = "|" + "---|" * (3 + len(COLUMNS))
    lines = [header, rule]
    paper = result.get("paper") or {}
    if paper:
        cells = [_cell(k, f, paper, {}) for k, _, f in COLUMNS]
        expected = result["protocol_details"].get("expected_images") or "?"
        lines.append(
            f"| Moebius (paper) | {result['protocol']} | {expected} | " + " | ".join(cells) + " |"
        )
    name = result["model"]
    if result.get("random_weights"):
        name += " (RANDOM-WEIGHT EXTRACTORS, not comparable)"
    cells = [_cell(k, f, result["metrics"], result.get("intervals", {})) for k, _, f in COLUMNS]
    lines.append(
        f"| {name} | {result['protocol']} | {result['num_images']} | " + " | ".join(cells) + " |"
    )
    notes = list(result.get("warnings", []))
    if result.get("intervals"):
        boot = result["bootstrap"]
        notes.insert(
            0,
            f"[low, high]: {boot['confidence']:.0%} bootstrap interval over images "
            f"({boot['samples']} resamples)",
        )
    return "\n".join(lines) + "\n" + "".join(f"\n- {n}" for n in notes) + "\n"


def write_markdown(path: Path, result: dict) -> None:
    text = markdown_table(result)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def contact_sheet(rows: list[tuple[np.ndarray, ...]], thumb: int = 192) -> Image.Image:
    """Rows of (input, mask, prediction, ground truth) uint8 images → one labelled PNG."""
    labels = ("input", "mask (white = hole)", "ours", "ground truth")
    label_h, gap = 22, 4
    width = len(labels) * (thumb + gap) + gap
    sheet = Image.new("RGB", (width, label_h + len(rows) * (thumb + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    for col, label in enumerate(labels):
        draw.text((gap + col * (thumb + gap) + 4, 5), label, fill="black")
    for row, images in enumerate(rows):
        for col, image in enumerate(images):
            tile = Image.fromarray(image).convert("RGB").resize((thumb, thumb), Image.LANCZOS)
            sheet.paste(tile, (gap + col * (thumb + gap), label_h + row * (thumb + gap)))
    return sheet


def write_contact_sheet(path: Path, rows: list[tuple[np.ndarray, ...]]) -> None:
    sheet = contact_sheet(rows)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
