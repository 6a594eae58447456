"""Uploaded bytes → images, refusing what is not an image or too large before decoding it.

Pillow's ``Image.open`` reads only the header, so a decompression bomb (a small file that
claims 100000 × 100000 pixels) is refused from its declared size without allocating it. Only
common photo formats are opened: some others run external programs (EPS runs Ghostscript).
"""

import base64
import binascii
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from moebius.image_io import to_mask, to_rgb
from moebius.serve.errors import ApiError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG covers MPO (phone photos)
FORMAT_NAMES = "PNG, JPEG, WebP, BMP, TIFF or GIF"
_DATA_URL_PREFIX = "base64,"


def open_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """The first frame of an image file, decoded and EXIF-oriented, or an :class:`ApiError`:
    415 not an image, 413 more than ``max_pixels``, 400 undecodable (e.g. truncated)."""
    if not data:
        raise ApiError(400, "bad_image", f"{what} is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns from ~89 MP on; our own limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ApiError(415, "not_an_image", f"{what} is not a {FORMAT_NAMES} image") from None
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", f"{what}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(400, "bad_image", f"cannot read {what}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{what} is {width}x{height} = {width * height / 1e6:.1f} megapixels; this server "
            f"accepts at most {max_pixels / 1e6:.1f}",
        )
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ApiError(400, "bad_image", f"cannot decode {what}: {exc}") from None


def decode_photo(data: bytes, max_pixels: int) -> Image.Image:
    return to_rgb(open_image(data, "image", max_pixels))


def decode_mask(data: bytes, max_pixels: int) -> Image.Image:
    """White (or opaque, in a transparent PNG) = repaint, as ``moebius inpaint`` reads masks."""
    return to_mask(open_image(data, "mask", max_pixels))


def from_base64(text: str, what: str) -> bytes:
    """Standard base64, with or without a ``data:image/…;base64,`` prefix."""
    if not isinstance(text, str):
        raise ApiError(422, "invalid_request", f"{what} must be a base64 string")
    if text.startswith("data:"):
        text = text.partition(_DATA_URL_PREFIX)[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_image", f"{what} is not valid base64") from None


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_bytes(image: Image.Image) -> bytes:
    """Lossless and quick: on a 4 MP photo zlib level 1 encodes about 4x faster than Pillow's
    default level 6, for a file about 20 % larger."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
