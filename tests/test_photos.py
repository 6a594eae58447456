"""The training-photo script: licences from Debian copyright files, folders, multi-scale crops."""

import json

import numpy as np
import pytest
from PIL import Image

from moebius.errors import InputError
from moebius.reproduce.photos import (
    HELDOUT_SIDE,
    PHOTOS,
    SKIMAGE,
    TRAIN_SIDE,
    PhotoSource,
    licence_markdown,
    licence_of,
    parse_copyright,
    prepare_folder,
    prepare_photos,
    split_files,
)
from moebius.train.data import random_crop

# The shapes of the real files: mate's paths keep the source folders, lomiri's are renamed
# on install (16.04/x.jpg → usr/share/backgrounds/x.jpg), and debian/* must not match by name.
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: backgrounds

Files: *
Copyright: 2014 Someone
License: GPL-2+

Files: nature/Aqua.jpg
       nature/LadyBird.jpg
Copyright: 2008, Charles Barbin
License: GPL-2+
Comment: Copyright holders are found in AUTHORS file.

Files: 16.04/seeding_by_Clements_Engelhardt.jpg
Copyright: Clemens Engelhardt, 2018
License: CC0-1.0

Files: desktop/Ubuntu-Mate-*-no-logo.png
Copyright: 2014 Goce Mitevski
           2015 Another Holder
License: CC-BY-SA-4.0

Files: debian/*
Copyright: 2011, Packager
License: GPL-3+

License: CC-BY-SA-4.0
 Unless otherwise indicated, artwork is available under the Creative Commons
 Attribution Share-alike license v4.0.
"""


def test_licences_follow_dep5_last_match_and_renamed_folders():
    stanzas = parse_copyright(COPYRIGHT)
    assert [s.licence for s in stanzas] == ["GPL-2+", "GPL-2+", "CC0-1.0", "CC-BY-SA-4.0", "GPL-3+"]
    aqua = licence_of(stanzas, "usr/share/backgrounds/mate/nature/Aqua.jpg")
    assert (aqua.licence, aqua.copyright) == ("GPL-2+", "2008, Charles Barbin")
    seeding = licence_of(stanzas, "usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg")
    assert seeding.licence == "CC0-1.0"
    logo = licence_of(stanzas, "usr/share/backgrounds/mate/desktop/Ubuntu-Mate-Cold-no-logo.png")
    assert logo.licence == "CC-BY-SA-4.0"
    assert logo.copyright == "2014 Goce Mitevski; 2015 Another Holder"
    other = licence_of(stanzas, "usr/share/backgrounds/mate/nature/Dune.jpg")
    assert other.copyright == "2014 Someone"  # only "Files: *" matches, not "debian/*"
    with pytest.raises(InputError):
        licence_of(stanzas[1:], "usr/share/backgrounds/unknown.jpg")


def test_the_photo_list_keeps_held_out_photos_apart():
    names = [p.name for p in PHOTOS]
    assert len(set(names)) == len(names)
    heldout = {p.name for p in PHOTOS if p.split == "heldout"}
    train = {p.name for p in PHOTOS if p.split == "train"}
    assert {"chelsea", "rocket", "dune"} <= heldout and len(train) >= 3 * len(heldout) - 3
    # the README and the demo test use these without any download
    assert all(p.package == SKIMAGE for p in PHOTOS if p.name in ("chelsea", "rocket"))


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random photo stand-in: low-frequency noise upsampled."""
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def test_a_folder_of_photos_is_split_downscaled_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mine"
    folder.mkdir()
    sizes = [(1600, 1000), (900, 1200), (640, 480), (2000, 1500), (1024, 768)]
    for i, size in enumerate(sizes):
        _photo(rng, *size).save(folder / f"p{i}.jpg", quality=95)
    (folder / "notes.txt").write_text("not a photo")

    manifest = prepare_folder(tmp_path / "out", folder, heldout=2)
    assert [r["split"] for r in manifest["photos"]] == ["train"] * 3 + ["heldout"] * 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    train = split_files(tmp_path / "out", "train")
    heldout = split_files(tmp_path / "out", "heldout")
    assert [p.stem for p in train] == ["p0", "p1", "p2"]
    assert [p.stem for p in heldout] == ["p3", "p4"]
    assert Image.open(train[0]).size == (round(1600 * TRAIN_SIDE / 1000), TRAIN_SIDE)
    assert Image.open(train[2]).size == (640, 480)  # never upscaled
    assert min(Image.open(heldout[0]).size) == HELDOUT_SIDE
    table = licence_markdown(manifest)
    assert table.count("\n") == 2 + len(sizes) and "as supplied" in table

    with pytest.raises(InputError, match="held out"):
        prepare_folder(tmp_path / "bad", folder, heldout=5)


def test_scikit_image_photos_need_no_package_manager(tmp_path):
    sources = [PhotoSource("coffee", SKIMAGE, "coffee", "train")]
    sources.append(PhotoSource("rocket", SKIMAGE, "rocket", "heldout"))
    manifest = prepare_photos(tmp_path, sources)
    coffee, rocket = manifest["photos"]
    assert (coffee["licence"], coffee["copyright"]) == ("CC0", "Rachel Michetti")
    assert rocket["licence"] == "public domain" and rocket["original_size"] == [640, 427]
    assert Image.open(tmp_path / coffee["file"]).size == (600, 400)


def test_multiscale_crops_zoom_within_the_range():
    # a horizontal ramp: a crop's spread of values tells how much of the photo it covers
    ramp = np.tile(np.linspace(0, 255, 1024).astype(np.uint8)[None, :, None], (512, 1, 3))
    image = Image.fromarray(ramp)
    spreads = {}
    for side in (128, 512):
        rng = np.random.default_rng(1)
        pixels, hole = random_crop(image, None, 128, rng, False, (side, side))
        assert pixels.shape == (128, 128, 3) and hole is None
        spreads[side] = int(pixels[..., 0].max()) - int(pixels[..., 0].min())
    # at short side 128 a crop spans a quarter of the width, at 512 a sixteenth
    assert spreads[128] == pytest.approx(4 * spreads[512], rel=0.1)

    first = random_crop(image, None, 96, np.random.default_rng(3), True, (100, 700))[0]
    again = random_crop(image, None, 96, np.random.default_rng(3), True, (100, 700))[0]
    assert np.array_equal(first, again)
