"""Where in a photo the model works, and how its output goes back into the photo.

Everything here is NumPy and Pillow, shared by every backend. At the model's working size it
is the authors' pre- and post-processing, bit for bit:

* the mask is binarised at 127.5; image and mask are resized with Lanczos so the short side is
  the working size and both sides are floored to multiples of 64; the resized mask is dilated
  with a K×K box of ones. From then on that dilated mask is the only mask: the hole the model
  sees (value ≥ 128) and the paste-back weight;
* ``blend``: the weight is a radius-3 Gaussian blur of that mask, ``out = result·w +
  original·(1 − w)`` in [0, 1] floats, truncated to 8 bit;
* ``compensate``: the fill is first shifted by 1.1 × the difference of the per-channel means of
  the original and the result over a ring around the hole (the hole's bounding box grown by 10
  px in height and width about its centre, minus the hole), then blended as above with the
  blurred binary hole and clipped.

A ``prefill`` (ours; the authors have none) puts OpenCV's Telea or Navier–Stokes fill of the
hole into the image that is encoded for the sampler's start. The masked image the model is
conditioned on keeps a zero hole, as the authors' model was trained with, unless the model was
trained on OpenCV's fill there instead (its ``masked_image_fill``; ours, see
:class:`moebius.pipeline.InpaintPipeline`).

Unlike the authors' code, which returns the resized image, the result goes back into the photo
at its own size: outside the (feathered, dilated) hole every pixel is the original one.
"""

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFilter

from moebius.errors import InputError
from moebius.image_io import to_mask, to_rgb
from moebius.masks import dilate_mask
from moebius.settings import InpaintSettings, PasteMode, Prefill, Strategy

# the authors floor both sides to this after scaling the short side to the working size
RESIZE_MULTIPLE = 64
# ``auto`` switches from ``resize`` to ``crop`` when the short side exceeds this × working size
CROP_THRESHOLD = 1.5
PASTE_BLUR_RADIUS = 3
COMPENSATE_RING = 10  # pixels the hole's bounding box grows, in height and in width
COMPENSATE_GAIN = 1.1
HOLE_THRESHOLD = 128  # mask value from which a working pixel is part of the hole
OPENCV_FILLS = {Prefill.TELEA: cv2.INPAINT_TELEA, Prefill.NS: cv2.INPAINT_NS}
# pixels around each hole pixel that OpenCV's fill draws from (its documented example value)
OPENCV_RADIUS = 3


def opencv_fill(pixels: np.ndarray, hole: np.ndarray, method: Prefill) -> np.ndarray:
    """(H, W, 3) uint8 pixels with the hole ((H, W), non-zero = hole) filled by OpenCV's Telea
    or Navier–Stokes method; the same fill whatever the channel order."""
    return cv2.inpaint(pixels, hole.astype(np.uint8), OPENCV_RADIUS, OPENCV_FILLS[method])


def binarise(mask: Image.Image) -> Image.Image:
    """0/255 "L" mask: values ≥ 127.5 become 255, as the authors threshold in 8 bit."""
    return mask.point(lambda v: 0 if v < 127.5 else 255, "L")


def working_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Short side → ``size`` (the long side truncated), both floored to multiples of 64."""
    if width < height:
        w, h = size, int(height * size / width)
    else:
        w, h = int(width * size / height), size
    return w // RESIZE_MULTIPLE * RESIZE_MULTIPLE, h // RESIZE_MULTIPLE * RESIZE_MULTIPLE


def crop_box(mask: np.ndarray, size: int, padding: int) -> tuple[int, int, int, int]:
    """A box around the mask's bounding box plus ``padding``, square with side ≥ ``size`` where
    the image allows, centred on the hole and shifted to stay inside the image."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(size, x1 - x0 + 2 * padding, y1 - y0 + 2 * padding)
    bw, bh = min(side, width), min(side, height)
    left = min(max(int(round((x0 + x1 - bw) / 2)), 0), width - bw)
    top = min(max(int(round((y0 + y1 - bh) / 2)), 0), height - bh)
    return int(left), int(top), int(left + bw), int(top + bh)


def _pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    height, width = array.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    reflect = pad_h < height and pad_w < width
    return np.pad(array, pads, mode="reflect" if reflect else "edge")


@dataclass
class Region:
    """One photo on its way through the pipeline: the box of it the model sees, and that box
    at working resolution."""

    image: Image.Image  # the whole input, RGB
    mask: Image.Image  # the whole input's mask, binarised 0/255
    box: tuple[int, int, int, int]  # the region the model sees, in input pixels
    strategy: Strategy  # resolved: never AUTO
    pixels: np.ndarray  # (H, W, 3) uint8 at working size (padded for ``original``)
    mask_pixels: np.ndarray  # (H, W) uint8 at working size, dilated: hole and paste weight

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    @property
    def working_shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]

    def at_working_size(self) -> "Region":
        """The same job as if the photo had been the working image itself: pasting back into
        it gives the image the authors' pipeline returns (at its resized size)."""
        working = Image.fromarray(self.pixels)
        hole = binarise(Image.fromarray(self.mask_pixels))
        return Region(
            working, hole, (0, 0, *working.size), Strategy.RESIZE, self.pixels, self.mask_pixels
        )

    @property
    def hole(self) -> np.ndarray:
        """(H, W) uint8, 1 in the hole at working size."""
        return (self.mask_pixels >= HOLE_THRESHOLD).astype(np.uint8)

    def opencv_fill(self, method: Prefill) -> np.ndarray:
        """The working pixels with the hole filled by OpenCV's Telea or Navier–Stokes method."""
        return opencv_fill(self.pixels, self.hole, method)

    def model_inputs(self, prefill: Prefill = Prefill.NONE) -> tuple[np.ndarray, np.ndarray]:
        """(image in [−1, 1] as (1, 3, H, W), hole as (1, 1, H, W) of 0/1), float32. Float64
        maths then one cast, as the authors do, so the inputs match theirs bit for bit. With a
        ``prefill`` the hole of the image holds OpenCV's fill instead of the photo's pixels."""
        pixels = self.pixels if prefill is Prefill.NONE else self.opencv_fill(prefill)
        image = (pixels / 255.0 * 2 - 1).astype(np.float32).transpose(2, 0, 1)[None]
        hole = self.hole.astype(np.float32)[None, None]
        return np.ascontiguousarray(image), hole


def prepare(
    image: Image.Image,
    mask: Image.Image,
    settings: InpaintSettings,
    size: int,
    pixel_multiple: int,
) -> Region | None:
    """The region to inpaint at working resolution, or None when the mask is empty."""
    image, mask = to_rgb(image), to_mask(mask)
    if mask.size != image.size:
        if not settings.resize_mask:
            raise InputError(
                f"mask size {mask.size[0]}x{mask.size[1]} differs from image size "
                f"{image.size[0]}x{image.size[1]} (use resize_mask / --resize-mask)"
            )
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
    mask = binarise(mask)
    if mask.getextrema()[1] == 0:
        return None
    strategy = settings.strategy
    if strategy is Strategy.AUTO:
        strategy = Strategy.CROP if min(image.size) > CROP_THRESHOLD * size else Strategy.RESIZE
    if strategy is Strategy.CROP:
        box = crop_box(np.asarray(mask) > 0, size, settings.crop_padding)
    else:
        box = (0, 0, *image.size)

    region, region_mask = image.crop(box), mask.crop(box)
    if strategy is Strategy.ORIGINAL:
        pixels = _pad_to_multiple(np.asarray(region), pixel_multiple)
        mask_pixels = _pad_to_multiple(np.asarray(region_mask), pixel_multiple)
    else:
        target = working_size(*region.size, size)
        if min(target) == 0:
            raise InputError(
                f"image {image.size[0]}x{image.size[1]} is too narrow for working size {size}: "
                f"a side would be under {RESIZE_MULTIPLE} px (use strategy original)"
            )
        pixels = np.asarray(region.resize(target, Image.Resampling.LANCZOS))
        mask_pixels = np.asarray(region_mask.resize(target, Image.Resampling.LANCZOS))
    mask_pixels = dilate_mask(mask_pixels, settings.dilation)
    return Region(image, mask, box, strategy, pixels, mask_pixels)


def _blurred(mask: Image.Image, radius: float) -> np.ndarray:
    """The paste weight in [0, 1], (H, W, 3): the mask as RGB, Gaussian-blurred."""
    return np.asarray(mask.convert("RGB").filter(ImageFilter.GaussianBlur(radius))) / 255.0


def _ring(hole: np.ndarray, grow: int) -> np.ndarray:
    """The hole's bounding box grown by ``grow`` px in height and width about its centre
    (clipped to the image), minus the hole itself."""
    rows, cols = np.nonzero(hole.any(axis=1))[0], np.nonzero(hole.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    half_h, half_w = (bottom - top + 1 + grow) // 2, (right - left + 1 + grow) // 2
    centre_y, centre_x = (top + bottom) // 2, (left + right) // 2
    ring = np.zeros_like(hole, dtype=bool)
    ring[
        max(0, centre_y - half_h) : min(hole.shape[0] - 1, centre_y + half_h) + 1,
        max(0, centre_x - half_w) : min(hole.shape[1] - 1, centre_x + half_w) + 1,
    ] = True
    return ring & ~hole


def blend(result: np.ndarray, original: np.ndarray, mask: Image.Image, radius: float):
    """``blend`` paste: result where the blurred mask is 1, the original where it is 0."""
    weight = _blurred(mask, radius)
    ours, theirs = result / 255.0, original / 255.0
    return np.uint8((ours * weight + (1 - weight) * theirs) * 255)


def compensate(
    result: np.ndarray, original: np.ndarray, mask: Image.Image, radius: float, ring: int
):
    """``compensate`` paste: the fill's colour shifted to match the ring around the hole."""
    hole = np.asarray(mask) > HOLE_THRESHOLD
    around = _ring(hole, ring)
    delta = np.zeros(3)
    if around.any():  # a hole covering the whole image has no surroundings to match
        delta = original[around].mean(axis=0) - result[around].mean(axis=0)
    weight = _blurred(Image.fromarray(hole.astype(np.uint8) * 255), radius)
    shifted = result / 255.0 + COMPENSATE_GAIN * delta / 255.0
    return np.uint8(np.clip(shifted * weight + (1 - weight) * (original / 255.0), 0, 1) * 255)


def paste_back(result: np.ndarray, region: Region, mode: PasteMode) -> Image.Image:
    """The model's (H, W, 3) uint8 output at working size → the whole photo."""
    output = Image.fromarray(result)
    paste_mask = Image.fromarray(region.mask_pixels)
    scale = 1.0
    if region.strategy is Strategy.ORIGINAL:
        output = output.crop((0, 0, *region.size))
        paste_mask = paste_mask.crop((0, 0, *region.size))
    elif output.size != region.size:
        scale = float(region.size[0] / output.size[0])
        output = output.resize(region.size, Image.Resampling.LANCZOS)
        # the dilated working mask at the photo's resolution; the user's own hole always counts
        resized = np.asarray(paste_mask.resize(region.size, Image.Resampling.LANCZOS))
        paste_mask = Image.fromarray(np.maximum(resized, np.asarray(region.mask.crop(region.box))))
    original = np.asarray(region.image.crop(region.box))
    pixels = np.asarray(output)
    if mode is PasteMode.BLEND:
        pixels = blend(pixels, original, paste_mask, PASTE_BLUR_RADIUS * scale)
    elif mode is PasteMode.COMPENSATE:
        pixels = compensate(
            pixels,
            original,
            paste_mask,
            PASTE_BLUR_RADIUS * scale,
            int(round(COMPENSATE_RING * scale)),
        )
    pasted = Image.fromarray(pixels)
    if region.box == (0, 0, *region.image.size):
        return pasted
    whole = region.image.copy()
    whole.paste(pasted, region.box[:2])
    return whole
