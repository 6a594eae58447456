"""The small-scale recipe end to end at a tiny scale on generated photos: every stage, the
report, resuming, and the bundled pipeline through the CLI."""

import dataclasses
import importlib
import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from moebius.cli import main as cli_main
from moebius.cpu import cpu_model, describe_cpu
from moebius.nn.engines import prefers_bfloat16
from moebius.reproduce import vae_training
from moebius.reproduce.small_scale import (
    DEMO_ROW,
    TEACHER_AS_STUDENT,
    RecipeConfig,
    at_sample_size,
    fills_task,
    run,
    sampled_rows,
    stage_data,
    wall_clock_text,
)
from moebius.reproduce.vae_training import SMALL_VAE


def _photos(folder, count: int = 5) -> None:
    """Smooth random colour fields with a few hard-edged shapes: photo-like enough to train on."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(count):
        small = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((200, 150), Image.Resampling.BICUBIC)
        pixels = np.array(image)
        y, x = rng.integers(0, 100), rng.integers(0, 150)
        pixels[y : y + 40, x : x + 40] = rng.integers(0, 256, 3)
        Image.fromarray(pixels).save(folder / f"photo{i}.png")


def test_recipe_runs_resumes_and_bundles(tmp_path, monkeypatch):
    _photos(tmp_path / "photos")
    cfg = RecipeConfig(
        out=str(tmp_path / "run"),
        photos=str(tmp_path / "photos"),
        heldout_photos=2,
        scale=0.002,
        vae_crop=32,
        train_size=64,
        short_side=[64, 128],
        cache_variants=2,
        batch_size=2,
        seeds=[0],
        eval_size=64,
        sample_steps=2,
        bootstrap=20,
        docs=str(tmp_path / "docs"),
        bundle=str(tmp_path / "demo"),
        jobs=2,  # two tasks at a time, in separate processes
    )
    assert run(cfg, until="data")["heldout_photos"] == 2
    licences = (tmp_path / "docs" / "training_photos.md").read_text()
    assert "3 photographs for training" in licences and "photo4" in licences
    result = run(cfg)

    expected = {"teacher", "student-kd-seed0", "student-nokd-seed0", "telea", "navier-stokes"}
    expected.add(DEMO_ROW)  # the first KD student at the bundle's own settings
    assert set(result["rows"]) == expected
    assert len(result["cases"]) == 2 * 3  # two held-out photos × thin, medium, thick
    for row in result["rows"].values():
        assert 0 < row["masked_psnr"] < 100 and -1 <= row["masked_ssim"] <= 1
    low, high = result["summary"]["kd_minus_nokd_masked_psnr"]["interval"]
    assert low <= result["summary"]["kd_minus_nokd_masked_psnr"]["mean"] <= high
    trained = {p.stem for p in (tmp_path / "run" / "data" / "photos" / "train").iterdir()}
    assert trained == {"photo0", "photo1", "photo2"}  # the last two by name are held out
    report = (tmp_path / "docs" / "small_scale.md").read_text()
    assert "Verdict" in report and "photo4" in report and "navier-stokes" in report
    # The machine that measured is kept with the numbers, so a rewritten report still names it.
    assert result["machine"]["cpu"] == cpu_model()
    assert f"Machine: {describe_cpu(result['machine'])} (" in report
    assert (tmp_path / "docs" / "images" / "small_scale_contact_sheet.png").stat().st_size > 0

    # The README's numbers on the demo and the run are rendered from the copy kept beside it.
    kept = json.loads((tmp_path / "docs" / "small_scale.json").read_text())
    assert kept["rows"] == result["rows"] and kept["summary"] == result["summary"]
    monkeypatch.syspath_prepend(Path(__file__).resolve().parent.parent / "scripts")
    readme = importlib.import_module("update_readme_small_scale")
    demo, summary = readme.render_demo(kept), readme.render_run(kept)
    assert f"{result['inpaint_seconds']['demo']:.1f} s for one 64 px inpaint" in demo
    assert "`--prefill telea --strength 0.25 --guidance 1 --residual-decode`, 5 denoising" in demo
    assert "--scale 0.002 --jobs 2 --threads" in summary
    assert f"Telea's {result['rows']['telea']['masked_psnr']:.1f} dB" in summary

    # Every task keeps its own seconds and threads, and the run its wall clock.
    run_dir = tmp_path / "run"
    tasks = ["vae", "decoder", "cache", "teacher", "student-kd-seed0", "student-nokd-seed0"]
    tasks += [f"eval/fills/{row}" for row in ("teacher", "student-kd-seed0", "demo")]
    own = {t: json.loads((run_dir / t / "result.json").read_text()) for t in tasks}
    assert all(entry["seconds"] > 0 and entry["threads"] >= 1 for entry in own.values())
    assert own["vae"]["threads"] == torch.get_num_threads()  # alone: all of them
    assert [entry["seconds"] for entry in result["invocations"]] == [result["wall_seconds"]]
    assert "2 tasks at a time in separate processes" in report and "evaluation fills" in report

    # The VAE trains in float32 (bfloat16 autocast costs its short run reconstruction); the
    # distilling teacher's forward runs in bfloat16 only where this CPU computes it natively and
    # measured faster in it, as converting it would make the training many times slower.
    bfloat16 = prefers_bfloat16()
    assert json.loads((run_dir / "vae" / "result.json").read_text())["bfloat16"] is False
    for name, teacher_bfloat16 in (("student-kd-seed0", bfloat16), ("student-nokd-seed0", False)):
        assert json.loads((run_dir / name / "result.json").read_text())["teacher_bfloat16"] is (
            teacher_bfloat16
        )
    assert "- Precision: " in report and "bfloat16 autocast" not in report
    assert "sees the masked image with OpenCV Telea's fill in the hole" in report
    assert ("teacher's forward in distillation ran in bfloat16" in report) is bfloat16

    # A second run finds every stage finished and redoes nothing.
    stamp = (run_dir / "eval" / "result.json").stat().st_mtime_ns
    assert run(cfg)["rows"] == result["rows"]
    assert (run_dir / "eval" / "result.json").stat().st_mtime_ns == stamp

    # Sampled in one process instead of two, the evaluation scores the same fills.
    shutil.rmtree(run_dir / "eval")
    alone = run(dataclasses.replace(cfg, jobs=1, docs=None, bundle=None))
    for name, row in result["rows"].items():
        assert alone["rows"][name]["masked_psnr"] == pytest.approx(row["masked_psnr"], abs=0.05)
    # That second invocation is on record beside the first, which ran every task.
    first_go, again = alone["invocations"]
    assert set(first_go["ran"]) >= set(own) | {"eval"} and again["seconds"] > 0
    assert again["ran"] == [*map(fills_task, sampled_rows(cfg)), "eval"]
    assert alone["wall_seconds"] == pytest.approx(first_go["seconds"] + again["seconds"])
    assert "over 2 invocations" in wall_clock_text(alone)
    assert "from the VAE to the report" in wall_clock_text(alone)
    # Stages copied in from an earlier run of the same recipe are named, not counted.
    copied = [{**e, "ran": [n for n in e["ran"] if n not in ("vae", "decoder")]} for e in alone["invocations"]]  # fmt: skip
    text = wall_clock_text(alone | {"invocations": copied})
    assert "every task but vae and decoder, whose results came from an earlier run" in text

    # The decoder stage retrained the VAE's decoder only (the latents the cache holds stay
    # valid), and the bundle ships that decoder.
    first, tuned, bundled = (
        AutoencoderKL.from_pretrained(path).state_dict()
        for path in (
            run_dir / "vae" / "vae",
            run_dir / "decoder" / "vae",
            tmp_path / "demo" / "vae",
        )
    )
    for name, weight in tuned.items():
        assert torch.equal(weight, first[name]) == name.startswith(("encoder.", "quant_conv."))
        assert torch.equal(bundled[name], weight.half())

    # The bundle is a pipeline directory the CLI can use, built for the evaluation size.
    manifest = json.loads((tmp_path / "demo" / "pipeline.json").read_text())
    assert manifest["model"] == "model"
    assert manifest["settings"] == {
        "guidance": 1.0,
        "strength": 0.25,
        "prefill": "telea",
        "residual_decode": True,
    }
    # Its networks were trained, and are sampled, with Telea's fill in the masked image's hole.
    assert manifest["masked_image_fill"] == cfg.masked_image_fill == "telea"
    cache = json.loads((run_dir / "cache" / "index.json").read_text())
    assert cache["masked_image_fill"] == "telea"
    config = json.loads((tmp_path / "demo" / "model" / "config.json").read_text())
    assert config["sample_size"] == cfg.eval_size // 8
    scheduler = json.loads((tmp_path / "demo" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"  # what its networks were trained on
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
            "4",  # one denoising step at the bundle's strength, 0.25
        ]
    )
    assert code == 0 and Image.open(tmp_path / "out.png").size == (96, 64)


def test_a_student_moved_to_another_size_computes_the_same():
    from moebius.models import build_model

    torch.manual_seed(0)
    small = build_model(
        {
            "model_type": "moebius",
            "block_out_channels": [16, 32, 32],
            "cross_attention_dim": 16,
            "encoder_hid_dim": 24,
            "norm_num_groups": 8,
            "sample_size": 8,
        }
    ).eval()
    large = at_sample_size(small, 16)
    assert large.config.sample_size == 16 and small.config.sample_size == 8
    x = torch.randn(2, 9, 16, 16)
    ids = torch.arange(20).reshape(2, 10)
    with torch.no_grad():
        assert torch.allclose(large(x, 500, ids).sample, small(x, 500, ids).sample, atol=1e-6)


def test_a_run_resumes_only_under_the_training_recipe_it_started_with(
    tmp_path, capsys, monkeypatch
):
    _photos(tmp_path / "photos")
    out = tmp_path / "run"

    def reproduce(*options: str, photos: str = str(tmp_path / "photos")) -> int:
        common = ["--out", str(out), "--until", "data", "--docs", str(tmp_path / "docs")]
        return cli_main(["reproduce", "small", *common, "--photos", photos, *options])

    assert reproduce("--scale", "0.01") == 0
    assert json.loads((out / "recipe.json").read_text())["vae"] == SMALL_VAE
    # Where it writes, the seeds and the evaluation's settings may change between invocations.
    assert reproduce("--scale", "0.01", "--jobs", "2", "--seeds", "0") == 0
    monkeypatch.chdir(tmp_path)  # the same photo folder, spelled relative to here
    assert reproduce("--scale", "0.01", photos="photos") == 0
    capsys.readouterr()
    assert reproduce("--scale", "0.02") != 0
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert "started under another training recipe (scale 0.01 → 0.02)" in error
    # What the masked image holds in the hole is part of the training recipe too.
    assert reproduce("--scale", "0.01", "--masked-image-fill", "none") != 0
    assert "(masked_image_fill telea → none)" in capsys.readouterr().err
    # A default written in code counts like a field: here the VAE trainer's learning rate.
    monkeypatch.setattr(vae_training, "train_vae", partial(vae_training.train_vae, lr=2e-3))
    assert reproduce("--scale", "0.01", photos="photos") != 0
    assert "(vae_trainers.vae.lr 0.001 → 0.002)" in capsys.readouterr().err
    monkeypatch.undo()
    # … and one in how the diffusion trainer is configured.
    monkeypatch.setitem(TEACHER_AS_STUDENT, "output_param", "diff_model.conv_in.weight")
    monkeypatch.chdir(tmp_path)
    assert reproduce("--scale", "0.01", photos="photos") != 0
    error = capsys.readouterr().err
    assert "(trainers.teacher.distill.output_param diff_model.conv_out.weight →" in error


def test_an_interrupted_data_stage_redone_pairs_photos_with_the_same_masks(tmp_path):
    _photos(tmp_path / "photos")
    cfg = RecipeConfig(photos=str(tmp_path / "photos"), heldout_photos=2, eval_size=64)
    out = tmp_path / "run"
    stage_data(cfg, out)
    heldout = out / "data" / "heldout"
    first = {p.name: p.read_bytes() for p in heldout.glob("*_mask.png")}
    assert len(first) == 2 * 3 and len(set(first.values())) == 2 * 3
    # Interrupted after the held-out files were written, before the stage was marked done.
    (out / "data" / "result.json").unlink()
    stage_data(cfg, out)
    assert {p.name: p.read_bytes() for p in heldout.glob("*_mask.png")} == first
    # A photo's masks follow from its name, not from its place among the held-out photos.
    more = RecipeConfig(photos=str(tmp_path / "photos"), heldout_photos=3, eval_size=64)
    stage_data(more, tmp_path / "more")
    again = {
        p.name: p.read_bytes() for p in (tmp_path / "more" / "data" / "heldout").glob("*_mask.png")
    }
    assert len(again) == 3 * 3 and {name: again[name] for name in first} == first
