"""Evaluation inputs: the image list, the protocol's resize/crop, and one mask per image."""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from moebius.errors import InputError
from moebius.eval.protocols import Protocol
from moebius.image_io import IMAGE_EXTENSIONS
from moebius.image_io import list_images as image_files


def list_images(directory: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files directly in ``directory``, sorted by name (the protocol's image order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"image folder not found: {directory}")
    files = image_files(directory)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {directory}")
    stems = [p.stem for p in files]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise InputError(f"two images in {directory} share the name {duplicate!r}")
    return files[:limit] if limit else files


def prepare_image(path: Path, resolution: int) -> np.ndarray:
    """uint8 (R, R, 3): short side resized to R (Lanczos), then a centred R×R crop."""
    from moebius.image_io import load_image

    image = load_image(path)
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return np.asarray(image.crop((left, top, left + resolution, top + resolution)))


class MaskSet:
    """One (R, R) uint8 mask per image, 1 = hole.

    From a folder: a file with the image's name, else the folder's sorted files in image order
    (the authors' mask sets are numbered 000000.png …). ``white`` says what white means in those
    files ("keep" for the LaMa/MAT/authors' sets, "hole" for ours and diffusers'). Without a
    folder, the protocol's generator draws mask i from ``numpy.random.default_rng([seed, i])``, so
    a mask depends only on (protocol, seed, index), not on ``--limit`` or the batch size.
    """

    def __init__(
        self,
        protocol: Protocol,
        images: list[Path],
        masks_dir: str | os.PathLike | None = None,
        white: str | None = None,
        seed: int = 0,
    ):
        self.protocol, self.seed = protocol, seed
        self.files: list[Path] | None = None
        self._lama = None
        self.white = white or protocol.published_masks_white or "hole"
        if self.white not in ("hole", "keep"):
            raise InputError(f"mask convention must be 'hole' or 'keep', got {self.white!r}")
        if masks_dir is None:
            self.source = f"{protocol.masks.describe()}, seed {seed}"
            return
        available = list_images(masks_dir)
        by_stem = {p.stem: p for p in available}
        if all(p.stem in by_stem for p in images):
            self.files = [by_stem[p.stem] for p in images]
            pairing = "matched by file name"
        elif len(available) >= len(images):
            self.files = available[: len(images)]
            pairing = "paired in sorted order"
        else:
            raise InputError(
                f"{masks_dir} has {len(available)} masks for {len(images)} images and their names "
                "do not match the images'"
            )
        self.source = f"files from {masks_dir} ({pairing}; white = {self.white})"

    def __call__(self, index: int) -> np.ndarray:
        size = self.protocol.resolution
        if self.files is not None:
            from moebius.image_io import load_mask

            mask = load_mask(self.files[index], invert=self.white == "keep")
            if mask.size != (size, size):
                mask = mask.resize((size, size), Image.NEAREST)
            return (np.asarray(mask) >= 128).astype(np.uint8)

        from moebius.masks import LamaMaskGenerator, mat_free_form_mask

        rng = np.random.default_rng([self.seed, index])
        spec = self.protocol.masks
        if spec.kind == "lama":
            if self._lama is None:
                self._lama = LamaMaskGenerator.from_config(spec.preset)
            return self._lama(size, size, rng).astype(np.uint8)
        return mat_free_form_mask(size, size, rng, spec.hole_range).astype(np.uint8)
