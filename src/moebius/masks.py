"""Random inpainting masks: LaMa-style generators, MAT-style free-form masks, dilation.

Every mask here is a (H, W) uint8 array with **1 = hole** (the diffusers convention).
Randomness comes only from the ``numpy.random.Generator`` passed in, so a mask is a
pure function of (size, generator state) — the trainer relies on that for bit-exact resume.

* :class:`LamaMaskGenerator` re-implements LaMa's ``MixedMaskGenerator`` as driven by the
  authors' ``mask_configs/random_{thin,medium,thick}_{256,512}.yaml``: each call picks ONE
  generator kind with probability proportional to its ``*_proba`` (irregular strokes or
  boxes; e.g. medium: strokes 1/1.3, boxes 0.3/1.3), then draws it. LaMa's dataset script
  keeps a mask only when its hole area is at most ``max_tamper_area``; we redraw until that holds.
* :func:`mat_free_form_mask` re-implements MAT's ``RandomMask`` (boxes + brush strokes,
  redrawn until the hole ratio lies strictly inside ``hole_range``), generalised to H ≠ W.
"""

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from moebius.errors import ConfigError

MASK_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "masks"
# "thin-256" → configs/masks/random_thin_256.yaml
MASK_PRESETS = {
    f"{kind}-{size}": f"random_{kind}_{size}.yaml"
    for kind in ("thin", "medium", "thick")
    for size in (256, 512)
}


def irregular_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    max_angle: int = 4,
    max_len: int = 60,
    max_width: int = 20,
    min_times: int = 0,
    max_times: int = 10,
) -> np.ndarray:
    """LaMa's random polyline strokes: ``times`` strokes of 1–5 segments each."""
    mask = np.zeros((height, width), np.uint8)
    for i in range(int(rng.integers(min_times, max_times + 1))):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(max_angle))  # radians, as LaMa
            if i % 2 == 0:
                angle = 2 * 3.1415926 - angle
            length = 10 + int(rng.integers(max_len))
            brush = 5 + int(rng.integers(max_width))
            end_x = int(np.clip(int(x + length * np.sin(angle)), 0, width))
            end_y = int(np.clip(int(y + length * np.cos(angle)), 0, height))
            cv2.line(mask, (x, y), (end_x, end_y), 1, brush)
            x, y = end_x, end_y
    return mask


def box_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    margin: int = 10,
    bbox_min_size: int = 30,
    bbox_max_size: int = 100,
    min_times: int = 0,
    max_times: int = 3,
) -> np.ndarray:
    """LaMa's random axis-aligned rectangles."""
    mask = np.zeros((height, width), np.uint8)
    bbox_max_size = min(bbox_max_size, height - 2 * margin, width - 2 * margin)
    if bbox_max_size <= bbox_min_size:
        raise ConfigError(
            f"box masks need an image larger than 2·margin + bbox_min_size; got {height}×{width}"
        )
    for _ in range(int(rng.integers(min_times, max_times + 1))):
        box_w = int(rng.integers(bbox_min_size, bbox_max_size))
        box_h = int(rng.integers(bbox_min_size, bbox_max_size))
        x0 = int(rng.integers(margin, width - margin - box_w + 1))
        y0 = int(rng.integers(margin, height - margin - box_h + 1))
        mask[y0 : y0 + box_h, x0 : x0 + box_w] = 1
    return mask


_KINDS = {"irregular": irregular_mask, "box": box_mask}


@dataclass
class LamaMaskGenerator:
    """LaMa ``MixedMaskGenerator`` (irregular strokes or boxes) with the area cap of its
    dataset script. Build it from a preset (``"thin-256"`` … ``"thick-512"``) or YAML path."""

    probabilities: dict[str, float]
    kwargs: dict[str, dict] = field(default_factory=dict)
    max_tamper_area: float = 1.0
    max_tries: int = 100

    def __post_init__(self):
        unknown = set(self.probabilities) - set(_KINDS)
        if unknown:
            raise ConfigError(f"unsupported LaMa mask kinds {sorted(unknown)}")
        self.probabilities = {k: p for k, p in self.probabilities.items() if p > 0}
        if not self.probabilities:
            raise ConfigError("LaMa mask config enables no generator kind")

    @classmethod
    def from_config(cls, name_or_path: str | os.PathLike) -> "LamaMaskGenerator":
        """Read the authors' LaMa-format YAML (``mask_generator_kwargs``, ``max_tamper_area``)."""
        name = str(name_or_path)
        path = MASK_CONFIG_DIR / MASK_PRESETS[name] if name in MASK_PRESETS else Path(name)
        if not path.is_file():
            raise ConfigError(
                f"mask config {name!r} is neither a preset ({', '.join(MASK_PRESETS)}) nor a file"
            )
        try:
            document = yaml.safe_load(path.read_text())
            kwargs = dict(document["mask_generator_kwargs"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read LaMa mask config {path}: {exc}") from exc
        probabilities, generator_kwargs = {}, {}
        for kind in ("irregular", "box", "segm", "squares", "superres", "outpainting"):
            proba = float(kwargs.get(f"{kind}_proba", 0) or 0)
            if proba > 0:
                probabilities[kind] = proba
                generator_kwargs[kind] = dict(kwargs.get(f"{kind}_kwargs") or {})
        return cls(probabilities, generator_kwargs, float(document.get("max_tamper_area", 1.0)))

    def draw_once(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """One mask from one generator kind chosen by the normalised probabilities."""
        kinds = list(self.probabilities)
        weights = np.array([self.probabilities[k] for k in kinds], np.float64)
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        return _KINDS[kind](height, width, rng, **self.kwargs.get(kind, {}))

    def __call__(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        for _ in range(self.max_tries):
            mask = self.draw_once(height, width, rng)
            if mask.mean() <= self.max_tamper_area:
                return mask
        return mask  # pathological configs: give the last draw rather than loop forever


def _brush_strokes(height: int, width: int, rng: np.random.Generator, max_tries: int) -> np.ndarray:
    """MAT's ``RandomBrush``: thick polylines with round joints, random flips."""
    from PIL import Image, ImageDraw

    min_vertex, max_vertex = 4, 18
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    min_width, max_width = 12, 48
    radius = math.sqrt(height * height + width * width) / 8
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(max_tries)) if max_tries > 0 else 0):
        num_vertex = int(rng.integers(min_vertex, max_vertex))
        angle_min = mean_angle - rng.uniform(0, angle_range)
        angle_max = mean_angle + rng.uniform(0, angle_range)
        angles = [
            2 * math.pi - rng.uniform(angle_min, angle_max)
            if i % 2 == 0
            else rng.uniform(angle_min, angle_max)
            for i in range(num_vertex)
        ]
        vertex = [(int(rng.integers(0, width)), int(rng.integers(0, height)))]
        for angle in angles:
            r = float(np.clip(rng.normal(radius, radius // 2), 0, 2 * radius))
            new_x = np.clip(vertex[-1][0] + r * math.cos(angle), 0, width)
            new_y = np.clip(vertex[-1][1] + r * math.sin(angle), 0, height)
            vertex.append((int(new_x), int(new_y)))
        stroke = int(rng.uniform(min_width, max_width))
        draw.line(vertex, fill=1, width=stroke)
        for vx, vy in vertex:
            half = stroke // 2
            draw.ellipse((vx - half, vy - half, vx + half, vy + half), fill=1)
    mask = np.asarray(canvas, np.uint8)
    if rng.random() > 0.5:
        mask = np.flip(mask, 0)
    if rng.random() > 0.5:
        mask = np.flip(mask, 1)
    return mask


def mat_free_form_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    hole_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """MAT's free-form mask (boxes up to half / full size + brush strokes), 1 = hole.

    Redrawn until ``hole_range[0] < hole ratio < hole_range[1]``, as MAT's ``RandomMask``.
    """
    low, high = hole_range
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"hole_range must satisfy 0 <= low < high <= 1, got {hole_range}")
    coef = min(low + high, 1.0)
    while True:
        keep = np.ones((height, width), np.uint8)
        for tries, frac in ((int(10 * coef), 2), (int(5 * coef), 1)):
            max_h, max_w = height // frac, width // frac
            for _ in range(int(rng.integers(tries)) if tries > 0 else 0):
                w, h = int(rng.integers(max_w)), int(rng.integers(max_h))
                x = int(rng.integers(-(w // 2), width - w + w // 2))
                y = int(rng.integers(-(h // 2), height - h + h // 2))
                keep[max(y, 0) : min(y + h, height), max(x, 0) : min(x + w, width)] = 0
        keep &= 1 - _brush_strokes(height, width, rng, int(20 * coef))
        hole = 1 - keep
        ratio = float(hole.mean())
        if low < ratio < high:
            return hole


def dilate_mask(mask: np.ndarray, kernel_size: int) -> np.ndarray:
    """Grow the hole with a ``kernel_size``×``kernel_size`` box (cv2.dilate, as the authors)."""
    if kernel_size <= 1:
        return mask
    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel, iterations=1)
