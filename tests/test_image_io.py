"""Loading photos and masks in the formats users have: EXIF rotation, odd modes, mask conventions."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from moebius.errors import InputError
from moebius.image_io import load_image, load_mask, to_mask, to_rgb

COFFEE = data.coffee()[:40, :60]  # 40 × 60 RGB crop of a real photo


def test_rgb_png_round_trip(tmp_path):
    Image.fromarray(COFFEE).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), COFFEE)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(COFFEE).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(tmp_path / "m.jpg", exif=exif)
    image = load_image(tmp_path / "phone.jpg")
    assert image.size == (40, 60)  # width and height swapped
    plain = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(image), np.rot90(plain, k=-1))
    assert load_mask(tmp_path / "m.jpg").size == (40, 60)


def test_grayscale_rgba_palette_cmyk_images():
    grey = Image.fromarray(COFFEE[..., 0])
    np.testing.assert_array_equal(np.asarray(to_rgb(grey))[..., 2], COFFEE[..., 0])
    rgba = Image.fromarray(np.dstack([COFFEE, np.zeros(COFFEE.shape[:2], np.uint8)]))
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba)), COFFEE)
    palette = Image.fromarray(COFFEE).convert("P")
    assert to_rgb(palette).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(to_rgb(palette)), np.asarray(palette.convert("RGB")))
    cmyk = Image.fromarray(COFFEE).convert("CMYK")
    assert np.abs(np.asarray(to_rgb(cmyk)).astype(int) - COFFEE).max() <= 1


def test_sixteen_bit_grayscale_image(tmp_path):
    values = COFFEE[..., 1].astype(np.uint16) * 257  # full 16-bit range
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image)[..., 0], COFFEE[..., 1])


def test_mask_conventions():
    hole = np.zeros((30, 40), np.uint8)
    hole[5:20, 10:30] = 255
    expected = hole

    np.testing.assert_array_equal(np.asarray(to_mask(Image.fromarray(hole))), expected)
    # inverted convention (black = repaint)
    np.testing.assert_array_equal(
        np.asarray(to_mask(Image.fromarray(255 - hole), invert=True)), expected
    )
    # a coloured brush on black
    red = np.zeros((30, 40, 3), np.uint8)
    red[..., 0] = hole
    np.testing.assert_array_equal(np.asarray(to_mask(Image.fromarray(red))), expected)
    # transparency: opaque strokes on a transparent layer, colour irrelevant
    layer = np.zeros((30, 40, 4), np.uint8)
    layer[..., :3] = 255
    layer[..., 3] = hole
    np.testing.assert_array_equal(np.asarray(to_mask(Image.fromarray(layer))), expected)
    # a fully opaque RGBA mask falls back to its colours
    opaque = np.dstack([np.repeat(hole[..., None], 3, axis=2), np.full_like(hole, 255)])
    np.testing.assert_array_equal(np.asarray(to_mask(Image.fromarray(opaque))), expected)
    # 1-bit, 16-bit and float masks
    np.testing.assert_array_equal(np.asarray(to_mask(Image.fromarray(hole).convert("1"))), expected)
    sixteen = Image.fromarray(hole.astype(np.uint16) * 257)
    np.testing.assert_array_equal(np.asarray(to_mask(sixteen)), expected)
    unit = Image.fromarray(hole.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(np.asarray(to_mask(unit)), expected)


def test_sixteen_bit_mask_file(tmp_path):
    hole = np.zeros((30, 40), np.uint16)
    hole[5:20, 10:30] = 65535
    Image.fromarray(hole).save(tmp_path / "mask16.png")
    mask = load_mask(tmp_path / "mask16.png")
    assert mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(mask), (hole // 257).astype(np.uint8))


def test_palette_masks(tmp_path):
    hole = np.zeros((30, 40), np.uint8)
    hole[5:20, 10:30] = 255
    indexed = Image.fromarray((hole > 0).astype(np.uint8), "P")
    indexed.putpalette([0, 0, 0, 0, 255, 0])  # 0 = black, 1 = green
    indexed.save(tmp_path / "transparent.png", transparency=0)
    indexed.save(tmp_path / "plain.png")
    np.testing.assert_array_equal(np.asarray(load_mask(tmp_path / "transparent.png")), hole)
    np.testing.assert_array_equal(np.asarray(load_mask(tmp_path / "plain.png")), hole)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\nbroken", b"GIF89a\x00"])
def test_unreadable_files(tmp_path, content):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(InputError, match="cannot read mask"):
        load_mask(tmp_path / "x.png")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="image not found"):
        load_image(tmp_path / "nope.png")
