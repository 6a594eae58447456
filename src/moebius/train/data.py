"""Training data: the authors' JSONL format or an image folder → crops, masks and LCG ids.

A record is ``{"image": path, "prompt": "background" | "foreground", "mask": optional path}``
(relative paths resolve against the JSONL's folder). Every random choice for one sample
(crop, flip, mask source, mask draw, dilation) comes from a ``numpy.random.Generator``
seeded by ``(seed, epoch, position)``, so a sample is a pure function of where it sits in
the data order — which is what makes resume bit-exact and DDP ranks agree with one process.
"""

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from moebius.errors import InputError
from moebius.image_io import IMAGE_EXTENSIONS, list_images
from moebius.masks import LamaMaskGenerator, dilate_mask, mat_free_form_mask
from moebius.models.lcg import category_ids
from moebius.settings import Category


@dataclass
class Record:
    image: Path
    prompt: str = "background"
    mask: Path | None = None


def read_jsonl(path: str | os.PathLike) -> list[Record]:
    """Parse the authors' JSONL; every problem is one :class:`InputError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            image = Path(item["image"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}:{number}: not a record with an 'image' key ({exc})") from exc
        prompt = item.get("prompt", "background")
        if prompt not in {c.value for c in Category}:
            raise InputError(f"{path}:{number}: prompt must be background or foreground")
        mask = item.get("mask")
        records.append(
            Record(
                image if image.is_absolute() else path.parent / image,
                prompt,
                None
                if not mask
                else (Path(mask) if Path(mask).is_absolute() else path.parent / mask),
            )
        )
    if not records:
        raise InputError(f"{path} holds no records")
    return records


def read_image_folder(path: str | os.PathLike, prompt: str = "background") -> list[Record]:
    """Every image under ``path`` (recursively, sorted), all with the same category."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"image folder not found: {path}")
    files = list_images(path, recursive=True)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return [Record(p, prompt) for p in files]


def read_records(source: str | os.PathLike, prompt: str = "background") -> list[Record]:
    """A ``.jsonl`` file or an image folder."""
    return read_image_folder(source, prompt) if Path(source).is_dir() else read_jsonl(source)


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc


@dataclass
class MaskSource:
    """One entry of the training config's ``masks`` list."""

    kind: str  # "lama" | "mat"
    weight: float = 1.0
    config: str = "medium-512"  # LaMa preset or YAML path
    hole_range: tuple[float, float] = (0.0, 1.0)  # MAT only


class MaskSampler:
    """Draws a training mask: the record's own mask (with ``dataset_mask_prob``) or one of the
    random generators chosen by weight, then a random ``dilate`` kernel (cv2, k×k ones)."""

    def __init__(
        self,
        sources: Sequence[MaskSource],
        dataset_mask_prob: float = 1.0,
        dilate: tuple[int, int] | None = (3, 7),
    ):
        if not sources:
            raise InputError("at least one random mask source is needed")
        self.sources = list(sources)
        self.lama = {
            s.config: LamaMaskGenerator.from_config(s.config) for s in sources if s.kind == "lama"
        }
        for s in sources:
            if s.kind not in ("lama", "mat"):
                raise InputError(f"unknown mask kind {s.kind!r} (use 'lama' or 'mat')")
        weights = np.array([s.weight for s in sources], np.float64)
        self.probabilities = weights / weights.sum()
        self.dataset_mask_prob = dataset_mask_prob
        self.dilate = dilate

    def random(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        if source.kind == "lama":
            return self.lama[source.config](height, width, rng)
        return mat_free_form_mask(height, width, rng, tuple(source.hole_range))

    def __call__(
        self, height: int, width: int, rng: np.random.Generator, dataset_mask: np.ndarray | None
    ) -> np.ndarray:
        use_dataset = dataset_mask is not None and rng.random() < self.dataset_mask_prob
        mask = dataset_mask if use_dataset else self.random(height, width, rng)
        if self.dilate is not None:
            mask = dilate_mask(mask, int(rng.integers(self.dilate[0], self.dilate[1] + 1)))
        return mask.astype(np.uint8)


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator for the sample at ``position`` of ``epoch``'s order."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, position]))


def random_crop(
    image: Image.Image,
    mask: Image.Image | None,
    size: int,
    rng: np.random.Generator,
    flip: bool,
    short_side: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random ``size``² crop and random h-flip. The image is first scaled so its short side is
    at least ``size``, or, with ``short_side``, a random length in that range (never below
    ``size``): multi-scale crops that show layout when zoomed out and texture when zoomed in."""
    w, h = image.size
    if mask is not None and mask.size != (w, h):
        raise InputError(f"mask size {mask.size} differs from its image size {(w, h)}")
    if short_side is None:
        scale = max(size / min(w, h), 1.0)
        if scale > 1.0:
            new = (max(size, round(w * scale)), max(size, round(h * scale)))
            image = image.resize(new, Image.BICUBIC)
            mask = mask.resize(new, Image.NEAREST) if mask is not None else None
            w, h = new
        x0, y0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        box = (x0, y0, x0 + size, y0 + size)
        pixels = np.array(image.crop(box), np.uint8)
        cropped_mask = mask.crop(box) if mask is not None else None
    else:
        low = max(short_side[0], size)
        scale = int(rng.integers(low, max(low, short_side[1]) + 1)) / min(w, h)
        scaled = (max(size, round(w * scale)), max(size, round(h * scale)))
        x0 = int(rng.integers(0, scaled[0] - size + 1))
        y0 = int(rng.integers(0, scaled[1] - size + 1))
        # resample only the crop's footprint in the source: one crop's cost at any zoom
        sx, sy = w / scaled[0], h / scaled[1]
        box = (x0 * sx, y0 * sy, min(w, (x0 + size) * sx), min(h, (y0 + size) * sy))
        pixels = np.array(image.resize((size, size), Image.BICUBIC, box=box), np.uint8)
        cropped_mask = None
        if mask is not None:
            cropped_mask = mask.resize((size, size), Image.NEAREST, box=box)
    hole = None
    if cropped_mask is not None:
        hole = (np.array(cropped_mask, np.uint8) >= 128).astype(np.uint8)
    if flip and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
        hole = hole[:, ::-1] if hole is not None else None
    return np.ascontiguousarray(pixels), None if hole is None else np.ascontiguousarray(hole)


class InpaintingDataset(torch.utils.data.Dataset):
    """Pixel-space samples for training without a latent cache.

    Indexed by ``(record index, epoch, position)`` keys from :class:`StepBatchSampler`; returns
    ``image`` (3, S, S) in [-1, 1], ``mask`` (1, S, S) with 1 = hole, ``input_ids`` (10,).
    """

    def __init__(
        self,
        records: Sequence[Record],
        size: int,
        masks: MaskSampler,
        seed: int = 0,
        flip: bool = True,
        short_side: tuple[int, int] | None = None,
    ):
        self.records, self.size, self.masks, self.seed, self.flip = records, size, masks, seed, flip
        self.short_side = short_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, torch.Tensor]:
        index, epoch, position = key
        record = self.records[index]
        rng = sample_rng(self.seed, epoch, position)
        image = _open(record.image, "RGB")
        dataset_mask = _open(record.mask, "L") if record.mask is not None else None
        pixels, hole = random_crop(image, dataset_mask, self.size, rng, self.flip, self.short_side)
        hole = self.masks(self.size, self.size, rng, hole)
        return {
            "image": torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0,
            "mask": torch.from_numpy(hole)[None].float(),
            "input_ids": category_ids(record.prompt, 1)[0].clone(),
        }


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for each optimisation micro-step from ``start_step``, this rank's slice of the
    global batch as ``(index, epoch, position)`` keys.

    The global order is a permutation of the dataset per epoch (seeded by ``(seed, epoch)``),
    cut into consecutive global batches of ``batch_size · world_size``; rank r takes the r-th
    contiguous slice. Any (world size, per-rank batch) with the same global batch therefore sees
    exactly the same samples, and resuming at a step needs no sampler state.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start_step: int = 0,
        num_steps: int | None = None,
    ):
        self.n, self.batch, self.world, self.rank = dataset_size, batch_size, world_size, rank
        self.seed, self.start, self.num_steps = seed, start_step, num_steps
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = dataset_size // self.global_batch
        if self.steps_per_epoch == 0:
            raise InputError(
                f"the dataset ({dataset_size} samples) is smaller than one global batch "
                f"({self.global_batch})"
            )

    def keys(self, step: int) -> list[tuple[int, int, int]]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        first = within * self.global_batch + self.rank * self.batch
        return [(int(order[p]), epoch, p) for p in range(first, first + self.batch)]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.start
        while self.num_steps is None or step < self.start + self.num_steps:
            yield self.keys(step)
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless sampler has no length")
        return self.num_steps
