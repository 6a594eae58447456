"""The bundled moebius-demo model through the real CLI, as a new user runs it offline."""

import numpy as np
from helpers import far_from
from PIL import Image, ImageDraw
from skimage import data

from moebius.cli import main as cli_main
from moebius.weights import BUNDLED


def test_demo_model_is_bundled():
    demo = BUNDLED["moebius-demo"]
    assert (demo / "pipeline.json").is_file()
    assert sum(p.stat().st_size for p in demo.rglob("*") if p.is_file()) < 20 * 2**20


def test_default_model_falls_back_to_the_demo_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    photo = Image.fromarray(data.coffee())  # 600×400, a real photo
    photo.save(tmp_path / "coffee.png")
    mask = Image.new("L", photo.size, 0)
    ImageDraw.Draw(mask).ellipse((380, 60, 470, 150), fill=255)
    mask.save(tmp_path / "mask.png")

    code = cli_main(
        [
            "inpaint",
            str(tmp_path / "coffee.png"),
            str(tmp_path / "mask.png"),
            "-o",
            str(tmp_path / "out.png"),
            "--steps",
            "4",
        ]
    )
    assert code == 0
    note = capsys.readouterr().err
    assert "moebius-demo" in note
    from moebius.pipeline import MoebiusInpaintPipeline

    denoiser = MoebiusInpaintPipeline.from_pretrained("moebius-demo").model
    assert f"a {sum(p.numel() for p in denoiser.parameters()) / 1e6:.1f}M-parameter" in note
    before, after = np.asarray(photo), np.asarray(Image.open(tmp_path / "out.png"))
    assert after.shape == before.shape
    hole = np.asarray(mask) > 0
    assert np.abs(after[hole].astype(int) - before[hole]).mean() > 1  # the hole was repainted
    far = np.ones_like(hole)
    far[40:170, 360:490] = False  # beyond the paste-back blur
    assert np.array_equal(after[far], before[far])


def test_the_demo_fills_a_heldout_photo_about_as_well_as_opencv(fixtures_dir):
    """A broken or untrained demo cannot ship: on a photo the recipe held out of training (with
    its medium mask), the demo's fill at its own defaults (a refined Telea fill) must score a
    masked PSNR no more than 1 dB below OpenCV Telea's on the same hole (the bundled demo: 0.004
    dB below), and the model painting from pure noise no more than 3 dB below (0.7 dB below
    here, 2.2 on average over the recipe's held-out cases; the first demo: 8 dB). The hole is
    blanked first, so neither method sees what was there."""
    import cv2

    from moebius.eval.pixel import psnr
    from moebius.pipeline import MoebiusInpaintPipeline

    photo = np.asarray(Image.open(fixtures_dir / "heldout" / "chelsea.jpg").convert("RGB"))
    hole = np.asarray(Image.open(fixtures_dir / "heldout" / "chelsea_medium_mask.png")) > 127
    blanked = np.where(hole[..., None], 127, photo).astype(np.uint8)
    mask = hole.astype(np.uint8) * 255

    telea = cv2.inpaint(blanked, mask, 3, cv2.INPAINT_TELEA)
    telea_db = psnr(telea, photo, hole)
    pipe = MoebiusInpaintPipeline.from_pretrained("moebius-demo")
    pipe.set_progress_bar_config(disable=True)
    away = far_from(mask, scale=photo.shape[0] / pipe.image_size)  # the photo is square
    for bound, settings in (
        (1.0, {}),
        (3.0, {"prefill": "none", "strength": 1.0}),
    ):
        filled = pipe(
            image=Image.fromarray(blanked),
            mask_image=Image.fromarray(mask),
            generator=0,
            **settings,
        )
        demo = np.asarray(filled.images[0])
        assert demo.shape == photo.shape
        np.testing.assert_array_equal(demo[away], blanked[away])  # pixels away from the hole kept
        demo_db = psnr(demo, photo, hole)
        assert demo_db >= telea_db - bound, (
            f"{settings}: demo {demo_db:.1f} dB, Telea {telea_db:.1f}"
        )
