"""OpenCV's Telea and Navier–Stokes fills as pipelines: the same call and output as the
diffusion pipeline, the same working region and paste-back, and ``moebius inpaint --model``."""

import threading

import cv2
import numpy as np
import pytest
from helpers import far_from
from PIL import Image
from skimage import data

from moebius.baselines import OpenCVInpaintPipeline
from moebius.cli import main
from moebius.errors import InputError
from moebius.sampling import Cancelled
from moebius.settings import InpaintSettings


def photo(width=320, height=240) -> Image.Image:
    return Image.fromarray(data.coffee()).resize((width, height), Image.Resampling.BICUBIC)


def box_mask(size, box) -> Image.Image:
    mask = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return Image.fromarray(mask)


@pytest.mark.parametrize("method, flag", [("telea", cv2.INPAINT_TELEA), ("ns", cv2.INPAINT_NS)])
def test_at_the_photos_resolution_it_is_cv2_inpaint(method, flag):
    image, mask = photo(), box_mask((320, 240), (100, 60, 180, 140))
    settings = InpaintSettings(strategy="original", paste="none")
    out = OpenCVInpaintPipeline(method)(image, mask, settings=settings)
    expected = cv2.inpaint(np.asarray(image), np.asarray(mask) // 255, 3, flag)
    np.testing.assert_array_equal(np.asarray(out.images[0]), expected)
    assert out.settings.steps == 1 and out.warnings == []
    assert "fill" in out.timings


def test_fills_a_smooth_gradient_smoothly():
    """Telea propagates the surroundings inward: a hole in a linear ramp comes back close to
    the ramp (a diffusion model with random weights would not)."""
    ramp = np.tile(np.linspace(40, 200, 256, dtype=np.float64), (256, 1))
    image = Image.fromarray(
        np.stack([ramp, ramp[::-1], np.full_like(ramp, 120)], -1).astype(np.uint8)
    )
    mask = box_mask((256, 256), (100, 100, 140, 140))
    out = np.asarray(
        OpenCVInpaintPipeline("telea")(
            image, mask, settings=InpaintSettings(strategy="original")
        ).images[0]
    )
    hole = np.asarray(mask) > 0
    error = np.abs(out.astype(int) - np.asarray(image).astype(int))[hole]
    assert error.mean() < 6


def test_same_region_and_paste_back_as_the_diffusion_pipeline():
    image = photo(1200, 900)  # auto → crop around the hole at the 512 px working size
    mask = box_mask(image.size, (700, 300, 820, 460))
    out = OpenCVInpaintPipeline("ns")(image, mask).images[0]
    assert out.size == image.size
    far = far_from(mask)
    np.testing.assert_array_equal(np.asarray(out)[far], np.asarray(image)[far])
    assert not np.array_equal(np.asarray(out)[~far], np.asarray(image)[~far])
    dilated = OpenCVInpaintPipeline("ns")(
        image, mask, settings=InpaintSettings(dilation=31)
    ).images[0]
    assert not np.array_equal(np.asarray(dilated), np.asarray(out))


def test_progress_cancel_and_empty_mask():
    pipe = OpenCVInpaintPipeline("telea")
    image, mask = photo(), box_mask((320, 240), (100, 60, 180, 140))
    seen = []
    pipe(image, mask, on_step=lambda progress: seen.append((progress.done, progress.total)))
    assert seen == [(1, 1)]
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        pipe(image, mask, cancel=stop)
    empty = pipe(image, Image.new("L", image.size, 0))
    assert empty.warnings[0].code == "empty_mask"
    np.testing.assert_array_equal(np.asarray(empty.images[0]), np.asarray(image))
    with pytest.raises(InputError, match="unknown OpenCV fill"):
        OpenCVInpaintPipeline("magic")


def test_inpaint_command_with_an_opencv_model(tmp_path):
    image, mask = photo(), box_mask((320, 240), (100, 60, 180, 140))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    argv = [
        "inpaint",
        str(tmp_path / "in.png"),
        str(tmp_path / "mask.png"),
        "-o",
        str(tmp_path / "out.png"),
    ]
    assert main([*argv, "--model", "opencv-telea", "--dilation", "9", "-q"]) == 0
    expected = OpenCVInpaintPipeline("telea")(
        image, mask, settings=InpaintSettings(dilation=9)
    ).images[0]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected)
    )
