"""Reading photos and masks the way users actually have them.

Everything that comes in is normalised to two things the pipeline understands:
an 8-bit RGB image and an 8-bit single-channel mask where 255 means "repaint"
(the diffusers convention). EXIF orientation is applied to both, so a mask drawn
on a phone photo lines up with what the user saw.
"""

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from moebius.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """An image by its extension; dotfiles are editor/OS debris (macOS "._x.jpg") or our own
    temporary files."""
    return (
        path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    )


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (and below it with ``recursive``), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image_file(p))


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) on moderately large images; huge photos are our use case.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(f"{what} {path} is too large to decode safely: {exc}") from exc


def _to_unit_float(image: Image.Image) -> np.ndarray:
    """Any single-band integer/float mode → float array in [0, 1]."""
    array = np.asarray(image)
    if image.mode == "F":
        array = array.astype(np.float64)
        top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        return np.clip(array / top, 0.0, 1.0)
    if image.mode.startswith("I;16") or array.dtype == np.uint16:
        return array.astype(np.float64) / 65535.0
    if image.mode == "I":  # 32-bit ints: 16-bit PNGs usually arrive in this mode
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        return np.clip(array.astype(np.float64) / top, 0.0, 1.0)
    return array.astype(np.float64) / 255.0


def _unit_to_u8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (alpha dropped, palette expanded, CMYK converted, 16-bit scaled)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _unit_to_u8(_to_unit_float(image))
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """The photo at ``path`` as 8-bit RGB, EXIF orientation applied."""
    return to_rgb(_open(path, "image"))


def _has_real_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA"):
        return image.getchannel("A").getextrema()[0] < 255
    return image.mode == "P" and "transparency" in image.info


def to_mask(image: Image.Image, invert: bool = False) -> Image.Image:
    """Any PIL mode → 8-bit "L" mask, 255 = repaint.

    Transparency, when present, is the mask (opaque strokes on a transparent layer
    = repaint, as drawn in image editors). Otherwise the brightest channel is used, so a
    coloured brush on black works as well as white on black. ``invert`` flips the
    convention (black = repaint, as in LaMa/MAT-style evaluation masks).
    """
    if _has_real_alpha(image):
        values = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float64) / 255.0
    elif image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA", "LA"):
        values = np.asarray(image.convert("RGB"), dtype=np.float64).max(axis=2) / 255.0
    elif image.mode == "1":
        values = np.asarray(image, dtype=np.float64)
    else:  # L and the 16/32-bit single-band modes
        values = _to_unit_float(image)
    if invert:
        values = 1.0 - values
    return Image.fromarray(_unit_to_u8(values), "L")


def load_mask(path: str | os.PathLike, invert: bool = False) -> Image.Image:
    """The mask at ``path`` as 8-bit "L", 255 = repaint (see :func:`to_mask`)."""
    return to_mask(_open(path, "mask"), invert=invert)
