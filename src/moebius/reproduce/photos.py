"""The public-domain / CC0 photos that ship inside scikit-image, split into train and held-out.

Held-out photos are never seen by any training stage; evaluation crops come only from them.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from moebius.files import atomic_write


@dataclass(frozen=True)
class Photo:
    name: str  # scikit-image's loader name
    licence: str
    split: str  # "train" | "heldout"


PHOTOS = (
    Photo("astronaut", "public domain (NASA)", "train"),
    Photo("coffee", "CC0 (Rachel Michetti)", "train"),
    Photo("hubble_deep_field", "public domain (NASA)", "train"),
    Photo("retina", "CC0 1.0", "train"),
    Photo("camera", "CC0 (Lav Varshney)", "train"),
    Photo("grass", "CC0 (CC0Textures)", "train"),
    Photo("gravel", "CC0 (CC0Textures)", "train"),
    Photo("brick", "CC0 (CC0Textures)", "train"),
    Photo("chelsea", "CC0 (Stefan van der Walt)", "heldout"),
    Photo("rocket", "public domain (SpaceX)", "heldout"),
)


def load_photo(name: str) -> Image.Image:
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray(pixels[..., :3].astype(np.uint8))


def write_training_photos(directory: Path, short_sides: tuple[int, ...] = (192, 288)) -> list[Path]:
    """Each training photo at a few scales, so random crops see both detail and layout."""
    written = []
    for photo in PHOTOS:
        if photo.split != "train":
            continue
        image = load_photo(photo.name)
        for side in short_sides:
            scale = side / min(image.size)
            size = (round(image.width * scale), round(image.height * scale))
            path = directory / f"{photo.name}_{side}.png"
            resized = image.resize(size, Image.Resampling.LANCZOS)
            atomic_write(path, lambda tmp, im=resized: im.save(tmp, format="PNG"))
            written.append(path)
    return written


def heldout_crops(count: int, size: int, seed: int) -> list[tuple[str, Image.Image]]:
    """``count`` fixed random ``size``² crops of the held-out photos (short side resized to 2·size)."""
    rng = np.random.default_rng(seed)
    sources = []
    for photo in PHOTOS:
        if photo.split == "heldout":
            image = load_photo(photo.name)
            scale = 2 * size / min(image.size)
            sources.append(
                (
                    photo.name,
                    image.resize(
                        (round(image.width * scale), round(image.height * scale)),
                        Image.Resampling.LANCZOS,
                    ),
                )
            )
    crops = []
    for i in range(count):
        name, image = sources[i % len(sources)]
        x = int(rng.integers(0, image.width - size + 1))
        y = int(rng.integers(0, image.height - size + 1))
        crops.append((f"{name}_{i:02d}", image.crop((x, y, x + size, y + size))))
    return crops
