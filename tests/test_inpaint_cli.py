"""``moebius inpaint`` end to end on real photos (scikit-image's bundled ones), with a tiny
student + tiny VAE saved as a pipeline directory."""

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import far_from, tiny_model, tiny_vae
from PIL import Image
from skimage import data

from moebius.cli import main
from moebius.pipeline import MoebiusInpaintPipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_pipeline")
    MoebiusInpaintPipeline(tiny_model(), tiny_vae()).save_pretrained(directory)
    return directory


def inpaint(model_dir: Path, *argv) -> int:
    return main(["inpaint", *map(str, argv), "--model", str(model_dir), "--steps", "3", "-q"])


def photo(width: int, height: int, which=data.coffee) -> Image.Image:
    return Image.fromarray(which()).resize((width, height), Image.Resampling.BICUBIC)


def box_mask(
    size: tuple[int, int], box: tuple[int, int, int, int], value: int = 255, fill: int = 0
):
    mask = np.full((size[1], size[0]), fill, np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    return Image.fromarray(mask)


def test_non_square_photo(model_dir, tmp_path):
    image, mask = photo(640, 480), box_mask((640, 480), (250, 150, 400, 300))
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    assert (
        inpaint(model_dir, tmp_path / "in.png", tmp_path / "mask.png", "-o", tmp_path / "out.png")
        == 0
    )
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (480, 640, 3)
    far = far_from(mask, scale=278 / 64)  # auto → crop: a 150 + 2 × 64 px box at 64 px
    np.testing.assert_array_equal(out[far], np.asarray(image)[far])
    assert not np.array_equal(out[~far], np.asarray(image)[~far])


def test_large_photo_crop_changes_only_the_box(model_dir, tmp_path):
    image = photo(3000, 2000, data.astronaut)
    hole = (2100, 700, 2300, 950)
    image.save(tmp_path / "big.jpg", quality=90)
    box_mask(image.size, hole).save(tmp_path / "big_mask.png")
    code = inpaint(
        model_dir, tmp_path / "big.jpg", tmp_path / "big_mask.png", "-o", tmp_path / "big_out.png",
        "--strategy", "crop", "--paste", "none", "--crop-padding", "32",
    )  # fmt: skip
    assert code == 0
    original = np.asarray(Image.open(tmp_path / "big.jpg").convert("RGB"))
    out = np.asarray(Image.open(tmp_path / "big_out.png"))
    assert out.shape == original.shape == (2000, 3000, 3)
    changed = np.argwhere((out != original).any(axis=2))
    # a 250 px hole + 2 × 32 px padding: a 314 px square box centred on the hole
    assert changed[:, 1].min() >= 2200 - 157 and changed[:, 1].max() < 2200 + 157
    assert changed[:, 0].min() >= 825 - 157 and changed[:, 0].max() < 825 + 157
    assert len(changed) > 0.9 * 314 * 314  # the whole box is the model's output


def test_rgba_image_and_alpha_mask(model_dir, tmp_path):
    image, mask = photo(160, 120), box_mask((160, 120), (40, 30, 100, 90))
    image.save(tmp_path / "rgb.png")
    mask.save(tmp_path / "mask.png")
    rgba = image.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(tmp_path / "rgba.png")
    # a transparent layer with an opaque (red) stroke where the hole is
    stroke = Image.new("RGBA", image.size, (0, 0, 0, 0))
    stroke.paste((255, 0, 0, 255), (40, 30, 100, 90))
    stroke.save(tmp_path / "stroke.png")
    assert (
        inpaint(model_dir, tmp_path / "rgb.png", tmp_path / "mask.png", "-o", tmp_path / "a.png")
        == 0
    )
    assert (
        inpaint(model_dir, tmp_path / "rgba.png", tmp_path / "stroke.png", "-o", tmp_path / "b.png")
        == 0
    )
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert b.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_grayscale_photo(model_dir, tmp_path):
    grey = Image.fromarray(data.camera()).resize((200, 150))
    mask = box_mask((200, 150), (50, 40, 120, 100))
    grey.save(tmp_path / "grey.png")
    mask.save(tmp_path / "mask.png")
    assert (
        inpaint(model_dir, tmp_path / "grey.png", tmp_path / "mask.png", "-o", tmp_path / "o.png")
        == 0
    )
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (150, 200, 3)
    far = far_from(mask, scale=150 / 64)  # auto → crop: the whole photo at 64 px
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel][far], np.asarray(grey)[far])


def test_inverted_mask_matches(model_dir, tmp_path):
    image = photo(128, 96)
    image.save(tmp_path / "in.png")
    box_mask(image.size, (30, 20, 90, 70)).save(tmp_path / "white_hole.png")
    box_mask(image.size, (30, 20, 90, 70), value=0, fill=255).save(tmp_path / "black_hole.png")
    assert (
        inpaint(
            model_dir, tmp_path / "in.png", tmp_path / "white_hole.png", "-o", tmp_path / "a.png"
        )
        == 0
    )
    code = inpaint(
        model_dir,
        tmp_path / "in.png",
        tmp_path / "black_hole.png",
        "-o",
        tmp_path / "b.png",
        "--invert-mask",
    )
    assert code == 0
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    )


def test_empty_mask_returns_input(model_dir, tmp_path, capsys):
    image = photo(96, 64)
    image.save(tmp_path / "in.png")
    Image.new("L", image.size, 0).save(tmp_path / "empty.png")
    assert (
        inpaint(model_dir, tmp_path / "in.png", tmp_path / "empty.png", "-o", tmp_path / "o.png")
        == 0
    )
    assert "mask is empty" in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), np.asarray(image))


def test_mismatched_sizes(model_dir, tmp_path, capsys):
    photo(128, 96).save(tmp_path / "in.png")
    box_mask((64, 48), (10, 10, 30, 30)).save(tmp_path / "small.png")
    code = inpaint(model_dir, tmp_path / "in.png", tmp_path / "small.png", "-o", tmp_path / "o.png")
    assert code == 2
    err = capsys.readouterr().err
    assert "differs from image size" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()
    code = inpaint(
        model_dir,
        tmp_path / "in.png",
        tmp_path / "small.png",
        "-o",
        tmp_path / "o.png",
        "--resize-mask",
    )
    assert code == 0 and Image.open(tmp_path / "o.png").size == (128, 96)


def test_unreadable_file(model_dir, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    box_mask((64, 64), (10, 10, 30, 30)).save(tmp_path / "mask.png")
    code = inpaint(
        model_dir, tmp_path / "broken.png", tmp_path / "mask.png", "-o", tmp_path / "o.png"
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moebius inpaint: error: cannot read image") and "\n" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "mask.png"]


def test_bad_usage(model_dir, tmp_path, capsys):
    assert main(["inpaint", "a.png", "-o", str(tmp_path / "o.png")]) == 2
    assert "IMAGE, MASK and -o OUT" in capsys.readouterr().err
    photo(64, 64).save(tmp_path / "in.png")
    code = inpaint(model_dir, tmp_path / "in.png", tmp_path / "in.png", "-o", tmp_path / "o.xyz")
    assert code == 2 and "unknown image extension" in capsys.readouterr().err
    code = inpaint(
        model_dir,
        tmp_path / "in.png",
        tmp_path / "in.png",
        "-o",
        tmp_path / "o.png",
        "--threads",
        "0",
    )
    assert code == 2 and "--threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_missing_weights_are_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    photo(64, 64).save(tmp_path / "in.png")
    box_mask((64, 64), (10, 10, 30, 30)).save(tmp_path / "mask.png")
    code = main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "-o", str(tmp_path / "o.png"),
                 "--model", "hustvl/Moebius", "-q"])  # fmt: skip
    assert code == 2
    assert "hf download hustvl/Moebius ft_places2/" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_batch_resume(model_dir, tmp_path, capsys):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    sources = {"coffee": data.coffee, "astronaut": data.astronaut, "chelsea": data.chelsea}
    for i, (name, which) in enumerate(sources.items()):
        photo(96 + 32 * i, 80, which).save(images / f"{name}.png")
        box_mask((96 + 32 * i, 80), (20, 20, 60, 60)).save(masks / f"{name}_mask.png")
    photo(64, 64).save(images / "orphan.jpg")  # no mask: reported, the rest still runs
    argv = ["--images", images, "--masks", masks, "--out", out, "--batch-size", "2"]

    assert inpaint(model_dir, *argv) == 2
    captured = capsys.readouterr()
    assert "3 written, 0 skipped (output exists), 1 failed" in captured.out
    assert "orphan.jpg: no mask" in captured.err
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["astronaut.png", "chelsea.png", "coffee.png", "run.json"]

    # an interrupted run: one output never written, a half-written temp file left behind
    stamps = {name: (out / name).stat().st_mtime_ns for name in ("astronaut.png", "chelsea.png")}
    (out / "coffee.png").unlink()
    (out / ".coffee.png.abc123.tmp").write_bytes(b"partial")
    (images / "orphan.jpg").unlink()
    assert inpaint(model_dir, *argv) == 0
    assert "1 written, 2 skipped (output exists), 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(first)
    assert (out / "coffee.png").read_bytes() == first["coffee.png"]
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps


def test_batch_with_unreadable_member(model_dir, tmp_path, capsys):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    photo(64, 64).save(images / "good.png")
    (images / "bad.png").write_bytes(b"garbage")
    for name in ("good", "bad"):
        box_mask((64, 64), (10, 10, 40, 40)).save(masks / f"{name}.png")
    assert inpaint(model_dir, "--images", images, "--masks", masks, "--out", out) == 2
    assert "1 written" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["good.png", "run.json"]


def test_never_writes_over_an_input_unless_asked(model_dir, tmp_path, capsys):
    photo(96, 64).save(tmp_path / "photo.png")
    box_mask((96, 64), (20, 20, 50, 50)).save(tmp_path / "mask.png")
    before = (tmp_path / "photo.png").read_bytes()
    for target in ("photo.png", "mask.png"):
        code = inpaint(
            model_dir, tmp_path / "photo.png", tmp_path / "mask.png", "-o", tmp_path / target
        )
        assert code == 2
        assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "photo.png").read_bytes() == before
    code = inpaint(model_dir, tmp_path / "photo.png", tmp_path / "mask.png", "-o",
                   tmp_path / "photo.png", "--overwrite")  # fmt: skip
    assert code == 0 and (tmp_path / "photo.png").read_bytes() != before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--guidance", "nan"], "guidance must be a finite number"),
        (["--guidance", "inf"], "guidance must be a finite number"),
        (["--strength", "0.2"], "run no denoising step"),  # 3 steps × 0.2
        (["--strength", "1.5"], "strength must be in"),
        (["--seed", "-1"], "seed must be in"),
        (["--dilation", "x"], "dilation must be a number"),
        (["--image-size", "100"], "image_size must be a multiple of 64"),
        (["--device", "cuda:1"], "no CUDA GPU is available"),
        (["--device", "tpu"], "unknown device"),
        (["--dtype", "float16", "--device", "cpu"], "float16 needs a GPU"),
    ],
)
def test_bad_settings_are_one_line_errors(model_dir, tmp_path, capsys, flags, message):
    photo(64, 64).save(tmp_path / "in.png")
    box_mask((64, 64), (10, 10, 30, 30)).save(tmp_path / "mask.png")
    code = inpaint(
        model_dir, tmp_path / "in.png", tmp_path / "mask.png", "-o", tmp_path / "o.png", *flags
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_batch_refuses_other_settings_and_results_do_not_depend_on_batching(
    model_dir, tmp_path, capsys
):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    for name, which in (("coffee", data.coffee), ("chelsea", data.chelsea)):
        photo(96, 64, which).save(images / f"{name}.png")
        box_mask((96, 64), (20, 10, 60, 50)).save(masks / f"{name}.png")
    argv = ["--images", images, "--masks", masks, "--out", out]
    assert inpaint(model_dir, *argv, "--batch-size", "2") == 0
    batched = (out / "chelsea.png").read_bytes()

    # one image alone, with the same seed, gives the same picture as inside the batch
    code = inpaint(
        model_dir, images / "chelsea.png", masks / "chelsea.png", "-o", tmp_path / "one.png"
    )
    assert code == 0
    alone = np.asarray(Image.open(tmp_path / "one.png"))
    np.testing.assert_allclose(alone, np.asarray(Image.open(out / "chelsea.png")), atol=1)

    (out / "coffee.png").unlink()
    capsys.readouterr()
    assert inpaint(model_dir, *argv, "--guidance", "1.5") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "guidance: 2.5 -> 1.5" in err
    assert not (out / "coffee.png").exists()

    assert inpaint(model_dir, *argv, "--guidance", "1.5", "--overwrite") == 0
    assert "2 written, 0 skipped" in capsys.readouterr().out
    assert (out / "chelsea.png").read_bytes() != batched
    assert inpaint(model_dir, *argv, "--guidance", "1.5") == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out


def test_every_command_has_the_same_runtime_options():
    from moebius.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in ("inpaint", "eval", "cache-latents"):
        options = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--device", "--dtype", "--threads"} <= options, name
        dtype = next(a for a in sub.choices[name]._actions if "--dtype" in a.option_strings)
        assert dtype.choices == ("auto", "float32", "bfloat16", "float16")
