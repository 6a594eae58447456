"""`moebius eval` end to end: 8 real photos, a tiny random model + tiny random VAE, and RANDOM-weight
metric extractors (marked as such in every output). Checks outputs, resume and the CLI."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from helpers import tiny_vae
from PIL import Image

import moebius
from moebius.cli import main
from moebius.errors import InputError
from moebius.eval.data import MaskSet, list_images, prepare_image
from moebius.eval.protocols import PROTOCOLS, get_protocol
from moebius.eval.runner import EvalConfig, evaluate
from moebius.pipeline import MoebiusInpaintPipeline
from moebius.settings import InpaintSettings

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "retina", "cat", "immunohistochemistry")  # fmt: skip


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Eight real photos of mixed sizes and aspect ratios (scikit-image's bundled images)."""
    directory = tmp_path_factory.mktemp("images")
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        Image.fromarray(image[..., :3]).save(directory / f"{name}.png")
    return directory


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_config_path) -> MoebiusInpaintPipeline:
    torch.manual_seed(0)
    model = moebius.build_model(str(tiny_config_path))
    return MoebiusInpaintPipeline(model, tiny_vae())


def _config(image_dir, out_dir, **overrides) -> EvalConfig:
    settings = dict(
        protocol="ffhq-256",
        images=str(image_dir),
        out_dir=str(out_dir),
        masks=str(
            Path(__file__).parent / "fixtures" / "eval_masks"
        ),  # authors' masks, white = keep
        model_name="tiny-random",
        settings=InpaintSettings(steps=2),
        batch_size=4,
        random_weights=True,  # RANDOM-weight extractors: tests only
        inception_size=75,
        bootstrap=10,
    )
    settings.update(overrides)
    return EvalConfig(**settings)


@pytest.fixture(scope="module")
def first_run(image_dir, tiny_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return out, evaluate(_config(image_dir, out), tiny_pipeline)


def test_protocol_presets():
    assert set(PROTOCOLS) == {
        "places2-test", "places2-large", "places2-small", "places2-256", "celebahq-512", "ffhq-256",
    }  # fmt: skip
    assert get_protocol("celebahq-512").resolution == 512
    assert get_protocol("ffhq-256").resolution == 256
    assert get_protocol("places2-test").masks.hole_range == (0.4, 0.5)
    with pytest.raises(InputError):
        get_protocol("imagenet")


def test_published_masks_white_means_keep(image_dir, fixtures_dir):
    protocol = get_protocol("celebahq-512")
    images = list_images(image_dir)
    masks = MaskSet(protocol, images, fixtures_dir / "eval_masks")
    files = sorted((fixtures_dir / "eval_masks").glob("*.png"))
    for index in (0, 3):
        hole = masks(index)
        assert hole.dtype == np.uint8 and set(np.unique(hole)) <= {0, 1}
        black = np.asarray(Image.open(files[index])) < 128
        assert np.array_equal(hole.astype(bool), black)  # paired in sorted order
    ours = MaskSet(protocol, images, fixtures_dir / "eval_masks", white="hole")
    assert np.array_equal(ours(0), 1 - masks(0))


def test_generated_masks_are_seeded_per_image(image_dir):
    protocol = get_protocol("places2-test")
    images = list_images(image_dir)
    a, b = MaskSet(protocol, images, seed=5), MaskSet(protocol, images[:2], seed=5)
    assert np.array_equal(a(1), b(1))
    assert not np.array_equal(a(1), MaskSet(protocol, images, seed=6)(1))
    assert 0.4 < a(0).mean() < 0.5 and a(0).shape == (512, 512)


def test_prepare_image_resizes_short_side_and_centre_crops(image_dir):
    image = prepare_image(image_dir / "rocket.png", 256)  # 427×640 original
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8


def test_end_to_end_writes_json_table_and_contact_sheet(first_run, image_dir):
    out, result = first_run
    written = json.loads((out / "metrics.json").read_text())
    assert written["num_images"] == 8 and written["protocol"] == "ffhq-256"
    assert written["random_weights"] is True
    assert all(e["random_weights"] for e in written["extractors"].values())
    assert written["inference"]["newly_inpainted"] == 8
    assert "white = keep" in written["mask_source"]
    metrics = written["metrics"]
    assert set(metrics) == {
        "fid",
        "lpips",
        "u_ids",
        "p_ids",
        "psnr",
        "ssim",
        "psnr_hole",
        "ssim_hole",
    }
    assert metrics["fid"] > 0 and metrics["lpips"] > 0 and 0 <= metrics["u_ids"] <= 0.5
    # the hole is where the (random) model differs; outside it paste-back keeps the photo
    assert metrics["psnr"] > metrics["psnr_hole"]
    for key in ("fid", "lpips"):
        low, high = written["intervals"][key]
        assert low <= high
    assert any("biased" in w for w in written["warnings"])
    assert len((out / "per_image.jsonl").read_text().splitlines()) == 8

    table = (out / "results.md").read_text()
    assert "| Moebius (paper) | ffhq-256 |" in table and "RANDOM-WEIGHT" in table
    row = next(line for line in table.splitlines() if line.startswith("| tiny-random"))
    assert f"{metrics['fid']:.2f}" in row

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 4 * 192 and sheet.height > 8 * 192
    predictions = sorted((out / "predictions").glob("*.png"))
    assert [p.stem for p in predictions] == sorted(PHOTOS)
    assert Image.open(predictions[0]).size == (256, 256)
    assert len(list((out / "masks").glob("*.png"))) == 8


def test_rerun_resumes_and_redoes_a_missing_batch_identically(first_run, image_dir, tiny_pipeline):
    out, first = first_run
    before = {p.name: p.read_bytes() for p in (out / "predictions").glob("*.png")}
    cheap = ("psnr",)
    again = evaluate(_config(image_dir, out, metrics=cheap), tiny_pipeline)
    assert again["inference"]["newly_inpainted"] == 0
    assert again["metrics"]["psnr"] == pytest.approx(first["metrics"]["psnr"])

    (out / "predictions" / "coffee.png").unlink()  # as if interrupted mid-batch
    redo = evaluate(_config(image_dir, out, metrics=cheap), tiny_pipeline)
    assert redo["inference"]["newly_inpainted"] == 4  # the whole batch of four
    after = {p.name: p.read_bytes() for p in (out / "predictions").glob("*.png")}
    assert after == before

    with pytest.raises(InputError, match="steps differ"):  # would silently mix settings
        evaluate(
            _config(image_dir, out, metrics=cheap, settings=InpaintSettings(steps=3)), tiny_pipeline
        )


def test_cli_scores_existing_predictions(first_run, image_dir, tmp_path, capsys):
    out, first = first_run
    predictions = tmp_path / "other_tool"
    shutil.copytree(out / "predictions", predictions)
    code = main([
        "eval", "--protocol", "ffhq-256", "--images", str(image_dir),
        "--masks", str(Path(__file__).parent / "fixtures" / "eval_masks"),
        "--predictions", str(predictions), "--out", str(tmp_path / "scored"),
        "--metrics", "lpips,psnr,ssim_hole", "--random-weights", "--bootstrap", "0", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert result["model"] == "other_tool" and result["random_weights"] is True
    assert result["metrics"]["psnr"] == pytest.approx(first["metrics"]["psnr"])
    assert result["metrics"]["lpips"] == pytest.approx(first["metrics"]["lpips"], rel=1e-5)
    assert "| other_tool" in capsys.readouterr().out


def test_cli_runs_a_saved_pipeline(tiny_pipeline, image_dir, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "model")
    code = main([
        "eval", "--protocol", "ffhq-256", "--images", str(image_dir), "--model", str(tmp_path / "model"),
        "--out", str(tmp_path / "run"), "--limit", "2", "--steps", "2", "--batch-size", "2",
        "--metrics", "psnr,ssim", "--bootstrap", "0", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result["num_images"] == 2 and result["inference"]["settings"]["steps"] == 2
    assert "seed 0" in result["mask_source"]  # no --masks: the protocol's seeded generator
    assert sorted(p.name for p in (tmp_path / "run" / "predictions").iterdir()) == [
        "astronaut.png", "camera.png",
    ]  # fmt: skip
    # one denoising step does nothing at strength 0.99: a clear error, not a crash
    args = ["eval", "--protocol", "ffhq-256", "--images", str(image_dir), "--model", str(tmp_path / "model"),
            "--out", str(tmp_path / "run1"), "--steps", "1", "--device", "cpu"]  # fmt: skip
    assert main(args) == 2


def test_cli_offline_without_weights_names_the_file(image_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MOEBIUS_WEIGHTS_DIR", raising=False)
    code = main([
        "eval", "--protocol", "ffhq-256", "--images", str(image_dir), "--predictions", str(image_dir),
        "--out", str(tmp_path / "x"), "--offline", "--weights-dir", str(tmp_path / "none"),
    ])  # fmt: skip
    assert code == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
