"""The small-scale recipe end to end at a tiny step count: every stage, the report, the bundle."""

import json

from moebius.cli import main as cli_main
from moebius.reproduce.photos import PHOTOS
from moebius.reproduce.small_scale import RecipeConfig, run, stage_data


def test_heldout_photos_are_never_trained_on():
    train = {p.name for p in PHOTOS if p.split == "train"}
    heldout = {p.name for p in PHOTOS if p.split == "heldout"}
    assert train and heldout and not train & heldout


def test_recipe_runs_resumes_and_bundles(tmp_path):
    cfg = RecipeConfig(
        out=str(tmp_path / "run"),
        scale=0.002,
        seeds=[0],
        heldout_count=2,
        sample_steps=2,
        docs=str(tmp_path / "docs"),
        bundle=str(tmp_path / "demo"),
    )
    result = run(cfg)

    assert set(result["rows"]) == {"teacher", "student-kd-seed0", "student-nokd-seed0", "telea"}
    for row in result["rows"].values():
        assert 0 < row["masked_psnr"] < 100 and -1 <= row["masked_ssim"] <= 1
    trained = {p.name for p in (tmp_path / "run" / "data" / "train").iterdir()}
    assert not any(name.startswith(("chelsea", "rocket")) for name in trained)
    report = (tmp_path / "docs" / "small_scale.md").read_text()
    assert "Verdict" in report and "chelsea" in report
    assert (tmp_path / "docs" / "images" / "small_scale_contact_sheet.png").stat().st_size > 0

    # A second run finds every stage finished and redoes nothing.
    stamp = (tmp_path / "run" / "eval" / "result.json").stat().st_mtime_ns
    assert run(cfg)["rows"] == result["rows"]
    assert (tmp_path / "run" / "eval" / "result.json").stat().st_mtime_ns == stamp

    # The bundle is a pipeline directory the CLI can use.
    assert json.loads((tmp_path / "demo" / "pipeline.json").read_text())["model"] == "model"
    from PIL import Image

    Image.new("RGB", (96, 64), (90, 120, 200)).save(tmp_path / "photo.png")
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (30, 20, 60, 44))
    mask.save(tmp_path / "mask.png")
    code = cli_main(
        [
            "inpaint",
            str(tmp_path / "photo.png"),
            str(tmp_path / "mask.png"),
            "-o",
            str(tmp_path / "out.png"),
            "--model-path",
            str(tmp_path / "demo"),
            "--steps",
            "2",
        ]
    )
    assert code == 0 and Image.open(tmp_path / "out.png").size == (96, 64)


def test_an_interrupted_data_stage_redone_pairs_crops_with_the_same_masks(tmp_path):
    cfg = RecipeConfig(out=str(tmp_path / "run"), heldout_count=3)
    out = tmp_path / "run"
    stage_data(cfg, out)
    heldout = out / "data" / "heldout"
    first = {p.name: p.read_bytes() for p in heldout.glob("*_mask.png")}
    # Interrupted after the held-out files were written, before the stage was marked done.
    (out / "data" / "result.json").unlink()
    stage_data(cfg, out)
    assert {p.name: p.read_bytes() for p in heldout.glob("*_mask.png")} == first
    assert len(first) == 3 and len(set(first.values())) == 3
