"""The bundled moebius-demo model through the real CLI, as a new user runs it offline."""

import numpy as np
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
    assert "moebius-demo" in capsys.readouterr().err
    before, after = np.asarray(photo), np.asarray(Image.open(tmp_path / "out.png"))
    assert after.shape == before.shape
    hole = np.asarray(mask) > 0
    assert np.abs(after[hole].astype(int) - before[hole]).mean() > 1  # the hole was repainted
    far = np.ones_like(hole)
    far[40:170, 360:490] = False  # beyond the paste-back blur
    assert np.array_equal(after[far], before[far])
