import copy
import csv
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import tiny_vae
from PIL import Image

import moebius
from moebius.cpu import native_bfloat16
from moebius.errors import ConfigError
from moebius.models.moebius_unet import MoebiusConfig
from moebius.train.config import TrainConfig
from moebius.train.data import StepBatchSampler
from moebius.train.trainer import Distiller


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_config_path):
    """8 natural 64×64 crops, a tiny random VAE and a wider tiny teacher, all on disk."""
    from skimage import data

    root = tmp_path_factory.mktemp("distill")
    images = root / "images"
    images.mkdir()
    for i, picture in enumerate([data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]):
        for j in range(2):
            y, x = 40 + 90 * j, 30 + 70 * j
            Image.fromarray(picture[y : y + 64, x : x + 72]).save(images / f"{i}_{j}.png")
    torch.manual_seed(0)
    tiny_vae(norm_num_groups=8, scaling_factor=0.18215).save_pretrained(root / "vae")
    teacher = MoebiusConfig(
        block_out_channels=(32, 64, 96), cross_attention_dim=32, encoder_hid_dim=48, sample_size=8
    )
    moebius.save_pretrained(moebius.build_model(teacher), root / "teacher")
    config = {
        "student": str(tiny_config_path),
        "teacher": str(root / "teacher"),
        "vae": str(root / "vae"),
        "image_size": 64,
        "seed": 0,
        "data": {"train": str(images), "num_workers": 0, "masks": [{"kind": "mat"}]},
        "distill": {"perceptual": "multiscale"},
        "optim": {"optimizer": "adamw", "lr": 2e-3},
        "train": {
            "batch_size": 2,
            "max_steps": 4,
            "mixed_precision": "no",
            "gradient_checkpointing": False,
            "log_every": 1,
            "sample_every": 0,
            "checkpoint_every": 0,
            "tensorboard": False,
        },
    }
    return root, config


@pytest.fixture(scope="module")
def cache_dir(assets):
    """The training images as a latent cache (2 mask/crop variants each)."""
    from diffusers import AutoencoderKL

    from moebius.train.data import MaskSampler, MaskSource, read_records
    from moebius.train.latent_cache import write_latent_cache

    root, document = assets
    vae = AutoencoderKL.from_pretrained(root / "vae")
    records = read_records(document["data"]["train"])
    masks = MaskSampler([MaskSource("mat")])
    write_latent_cache(records, vae, root / "cache", 64, masks, variants=2, progress=False)
    return root / "cache"


def make_config(assets, output_dir, **sections) -> TrainConfig:
    document = copy.deepcopy(assets[1])
    document["output_dir"] = str(output_dir)
    for section, values in sections.items():
        if isinstance(values, dict):
            document.setdefault(section, {}).update(values)
        else:
            document[section] = values
    return TrainConfig.from_dict(document)


def test_twenty_steps_reduce_the_losses_and_write_every_output(assets, tmp_path):
    config = make_config(
        assets,
        tmp_path,
        train={
            "max_steps": 20,
            "sample_every": 20,
            "num_val_samples": 2,
            "sample_settings": {"steps": 2},
            "checkpoint_every": 10,
            "keep_checkpoints": 1,
        },  # fmt: skip
    )
    trainer = Distiller(config, progress=False)
    assert isinstance(trainer.module.adapter.proj, torch.nn.Conv2d)  # student 64 → teacher 96
    batch = next(iter(trainer._loader(0, 1)))
    state = trainer.generator.get_state()
    x, t, ids, noise, _ = trainer._inputs(batch)
    trainer.generator.set_state(state)
    with torch.no_grad():
        teacher_eps = trainer.teacher(x, t, ids).sample

    def held_out() -> tuple[float, float]:
        with torch.no_grad():
            eps, _ = copy.deepcopy(trainer.module)(x, t, ids)
        return F.mse_loss(eps, noise).item(), F.mse_loss(eps, teacher_eps).item()

    task_before, fine_before = held_out()
    trainer.train()
    task_after, fine_after = held_out()
    # From the authors' initialisation (xavier-uniform, zero bias) twenty steps of the tiny
    # student lower the task loss by 5-10 %; rounding differences move it inside that range.
    assert task_after < 0.97 * task_before
    assert fine_after < fine_before

    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    for row in rows:
        assert float(row["w_fine"]) > 0 and float(row["w_coarse"]) > 0 and float(row["w_perc"]) > 0
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000020.pt"]
    sample = Image.open(tmp_path / "samples" / "step_00000020.png")
    assert sample.size == (3 * 64, 2 * 64)
    exported = moebius.from_pretrained(tmp_path / "final")
    reference = trainer.student.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in exported.state_dict().items())


def _states_equal(a: Distiller, b: Distiller) -> None:
    for name, value in a.module.state_dict().items():
        assert torch.equal(value, b.module.state_dict()[name]), name
    for name, value in a.ema.items():
        assert torch.equal(value, b.ema[name]), name
    for opt_a, opt_b in zip(a.optimizers, b.optimizers, strict=True):
        for p_a, p_b in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
            for key in p_a:
                assert torch.equal(torch.as_tensor(p_a[key]), torch.as_tensor(p_b[key])), key
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


def test_resume_is_bit_exact(assets, tmp_path):
    settings = {
        "data": {"short_side": [64, 96], "foreground_prob": 0.5},
        "optim": {"optimizer": "muon", "warmup_steps": 2, "schedule": "cosine", "max_grad_norm": 1.0},
        "train": {"max_steps": 4, "batch_size": 1, "grad_accum": 2, "ema_decay": 0.9,
                  "checkpoint_every": 2},
    }  # fmt: skip
    straight = Distiller(make_config(assets, tmp_path / "a", **settings), progress=False)
    straight.config.train.checkpoint_every = 0  # saving does not touch the training state
    straight.train()
    assert len(straight.optimizers) == 2  # Muon for 2-D weights, AdamW for the rest

    first = Distiller(make_config(assets, tmp_path / "b", **settings), progress=False)
    first.config.train.max_steps = 2
    first.train()
    resumed = Distiller(
        make_config(assets, tmp_path / "b", **settings), resume=True, progress=False
    )
    assert resumed.step == 2
    resumed.train()
    assert resumed.step == 4
    _states_equal(straight, resumed)
    rows = list(csv.DictReader((tmp_path / "b" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # the log continues


def test_foreground_labels_train_the_other_category_too(assets, tmp_path):
    config = make_config(assets, tmp_path, data={"foreground_prob": 0.25}, train={"batch_size": 8})
    trainer = Distiller(config, progress=False)
    batch = next(iter(trainer._loader(0, 1)))
    assert (batch["input_ids"][:, 0] == 0).all()  # an image folder is all "background"
    labels = torch.cat([trainer._inputs(batch)[2][:, 0] for _ in range(16)])
    assert set(labels.tolist()) == {0, 10}  # the first id of each category
    assert 0.15 < (labels == 10).float().mean() < 0.35


def test_gradient_checkpointing_gives_the_same_gradients_and_statistics(assets, tmp_path):
    runs = []
    for checkpointing in (False, True):
        config = make_config(assets, tmp_path, train={"gradient_checkpointing": checkpointing})
        trainer = Distiller(config, progress=False)
        batch = next(iter(trainer._loader(0, 1)))
        trainer.micro_step(batch, 1.0)
        runs.append(trainer)
    plain, checkpointed = runs
    for (name, p), q in zip(plain.module.named_parameters(), checkpointed.module.parameters(),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    for (name, b), c in zip(plain.module.named_buffers(), checkpointed.module.buffers(),
                            strict=True):  # fmt: skip
        assert torch.equal(b, c), name  # recomputation did not update BatchNorm twice


def test_step_batch_sampler_gives_every_world_size_the_same_global_batches():
    one = StepBatchSampler(10, 4, seed=3)
    two = [StepBatchSampler(10, 2, 2, rank, seed=3) for rank in (0, 1)]
    for step in range(5):  # crosses an epoch boundary (2 steps per epoch)
        assert one.keys(step) == two[0].keys(step) + two[1].keys(step)
    epoch0 = [k[0] for s in range(2) for k in one.keys(s)]
    assert len(set(epoch0)) == 8  # no repeats inside an epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp_matches_one_process(assets, cache_dir, tmp_path):
    """float64 so the comparison is not swamped by the random tiny model's conditioning; a
    latent cache keeps the VAE (and diffusers) out of the two worker processes."""
    settings = {
        "vae": None,
        "data": {"cache": str(cache_dir)},
        "train": {"max_steps": 2, "batch_size": 4, "sync_bn": True, "dtype": "float64"},
    }
    single = Distiller(make_config(assets, tmp_path / "single", **settings), progress=False)
    single.train()

    document = make_config(assets, tmp_path / "ddp", **settings).to_dict()
    document["train"]["batch_size"] = 2
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(document))
    port = _free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")  # fmt: skip
        command = [sys.executable, "-m", "moebius.cli", "distill", "--config",
                   str(tmp_path / "ddp.yaml"), "--quiet"]  # fmt: skip
        processes.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]

    ddp = moebius.from_pretrained(tmp_path / "ddp" / "final", dtype=torch.float64).state_dict()
    for name, value in single.student.state_dict().items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-6, atol=1e-8, msg=name)
    rows = [list(csv.DictReader((tmp_path / d / "metrics.csv").open())) for d in ("single", "ddp")]
    for a, b in zip(*rows, strict=True):
        for key in ("loss", "task", "fine", "coarse", "w_fine", "w_coarse", "grad_norm"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-8), key


def test_no_kd_baseline_needs_no_teacher_and_trains_on_the_task_loss(assets, tmp_path, capsys):
    from moebius.cli import main

    document = make_config(assets, tmp_path / "run", train={"max_steps": 2}).to_dict()
    document["teacher"] = "does-not-exist"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(document))
    assert main(["distill", "--config", str(config), "--no-kd", "--quiet"]) == 0
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 2 and rows[0]["fine"] == rows[0]["w_fine"] == ""
    assert float(rows[0]["loss"]) == float(rows[0]["task"])

    assert main(["distill", "--config", str(config), "--quiet"]) == 2  # KD needs the teacher
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-4\n  learning_rate: 3\n")
    assert main(["distill", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) in optim: learning_rate" in err


def test_training_from_a_latent_cache_needs_no_vae(assets, cache_dir, tmp_path):
    config = make_config(assets, tmp_path / "run", data={"cache": str(cache_dir)},
                         train={"max_steps": 2})  # fmt: skip
    config.vae = None
    trainer = Distiller(config, progress=False)
    assert trainer.vae is None
    metrics = trainer.train()
    assert np.isfinite(metrics["loss"]) and trainer.step == 2


def test_the_masked_image_fill_reaches_the_model_input_and_must_match_the_cache(
    assets, cache_dir, tmp_path
):
    """With data.masked_image_fill the live-encoded masked latent is that of OpenCV's fill of
    the hole (the rest of the input, drawn from the same stream, is unchanged); a cache written
    with another fill, or an unknown fill, is refused before training."""
    inputs = {}
    for fill in ("none", "telea"):
        config = make_config(assets, tmp_path / fill, data={"masked_image_fill": fill})
        trainer = Distiller(config, progress=False)
        batch = next(iter(trainer._loader(0, 1)))
        inputs[fill] = trainer._inputs(batch)[0]
    latent = inputs["none"].shape[1] // 2  # x_t (C) | mask (1) | masked latent (C)
    torch.testing.assert_close(inputs["telea"][:, : latent + 1], inputs["none"][:, : latent + 1])
    assert not torch.allclose(inputs["telea"][:, latent + 1 :], inputs["none"][:, latent + 1 :])

    cached = make_config(
        assets, tmp_path / "cached", data={"cache": str(cache_dir), "masked_image_fill": "telea"}
    )
    with pytest.raises(ConfigError, match="hold 'none' in the hole but data.masked_image_fill"):
        Distiller(cached, progress=False)
    unknown = make_config(assets, tmp_path / "unknown", data={"masked_image_fill": "blur"})
    with pytest.raises(
        ConfigError, match="masked_image_fill must be one of none, telea, ns, got 'blur'"
    ):
        Distiller(unknown, progress=False)


def test_pixelhacker_teacher_is_paired_by_model_type(assets, tmp_path, fixtures_dir):
    import json

    document = json.loads((fixtures_dir / "pixelhacker_tiny_fixture.json").read_text())
    torch.manual_seed(0)
    teacher = moebius.build_model({**document["model_config"], "model_type": "PixelHacker"})
    config = make_config(assets, tmp_path, train={"max_steps": 1})
    config.teacher = None  # the object below is used instead
    trainer = Distiller(config, teacher=teacher, progress=False)
    assert (trainer.module.block, trainer.teacher_block) == (2, 5)  # kd_pairs default
    assert trainer.module.adapter.proj.out_channels == 128  # tiny PixelHacker block 5 width
    assert np.isfinite(trainer.train()["coarse"])


def test_example_config_holds_the_authors_512_recipe():
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "train_moebius_512.yaml"
    config = TrainConfig.from_yaml(path)
    assert (config.student, config.teacher, config.image_size) == (
        "moebius-0.2b",
        "pixelhacker",
        512,
    )
    assert config.optim.optimizer == "muon" and config.optim.lr == 1e-4
    assert config.optim.schedule == "constant" and config.optim.warmup_steps == 0
    run = config.train
    assert (run.batch_size, run.mixed_precision, run.gradient_checkpointing) == (2, "bf16", True)
    assert run.max_steps == 200_000 and config.distill.noise_offset == 0.0357
    assert config.data.dilate == [3, 7] and config.scaling_factor == 0.13025
    assert [m.config for m in config.data.masks] == ["thin-512", "medium-512", "thick-512"]


def test_a_diffusers_unet_can_teach_through_the_adapter(assets, tmp_path):
    from diffusers import UNet2DConditionModel

    from moebius.train.teachers import DiffusersUNetTeacher

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
    )  # fmt: skip
    teacher = DiffusersUNetTeacher(unet, torch.nn.Embedding(20, 32))
    out = teacher(torch.randn(2, 9, 8, 8), torch.tensor([1, 500]), torch.arange(10).expand(2, 10))
    shapes = [tuple(b.shape[1:]) for b in out.block_outputs]
    assert shapes == [(32, 4, 4), (64, 4, 4), (64, 4, 4), (64, 8, 8), (32, 8, 8)]
    assert out.sample.shape == (2, 4, 8, 8)

    config = make_config(
        assets, tmp_path, train={"max_steps": 1}, distill={"student_block": 0, "teacher_block": 2}
    )
    trainer = Distiller(config, teacher=teacher, progress=False)
    assert trainer.module.adapter.proj.out_channels == 64  # student 32 → mid block 64
    assert np.isfinite(trainer.train()["coarse"])


def test_v_prediction_trains_on_v_and_saves_the_schedule_that_samples_it(assets, tmp_path):
    from moebius.sampling import NoiseSchedule

    config = make_config(
        assets,
        tmp_path,
        teacher=None,
        distill={"kd": False, "prediction_type": "v_prediction", "perceptual": "none"},
        train={"max_steps": 1},
    )
    config.teacher = "pixelhacker"
    trainer = Distiller(config, progress=False)
    batch = next(iter(trainer._loader(0, 1)))
    state = trainer.generator.get_state()
    x, t, ids, noise, x0 = trainer._inputs(batch)
    trainer.generator.set_state(state)
    with torch.no_grad():
        output, _ = copy.deepcopy(trainer.module)(x, t, ids)
    v = NoiseSchedule(prediction_type="v_prediction").target(x0, noise, t)
    metrics = trainer.train()
    assert metrics["task"] == pytest.approx(F.mse_loss(output, v).item(), rel=1e-5)
    assert metrics["task"] != pytest.approx(F.mse_loss(output, noise).item(), rel=1e-3)
    assert NoiseSchedule.load(tmp_path / "final").prediction_type == "v_prediction"


def test_a_near_identity_start_is_applied_only_when_asked(assets, tmp_path):
    def first_proj_out(init):
        config = make_config(assets, tmp_path / init, student_init=init, distill={"kd": False})
        student = Distiller(config, progress=False).student
        return next(m.proj_out.weight for m in student.modules() if hasattr(m, "proj_out"))

    assert first_proj_out("authors").abs().sum() > 0
    assert not first_proj_out("near-identity").any()
    with pytest.raises(ConfigError, match="student_init"):
        first_proj_out("zeros")


def test_the_teacher_alone_can_run_in_bfloat16(assets, tmp_path):
    """The teacher's precision is its own: with the student's fixed, the student's task loss is
    unchanged to the bit and the distillation term moves by bfloat16 rounding only."""
    for student_precision in ("no", "bf16"):
        first_rows = {}
        for teacher_precision in ("no", "bf16"):
            run = tmp_path / f"{student_precision}-{teacher_precision}"
            train = {
                "max_steps": 1,
                "mixed_precision": student_precision,
                "teacher_mixed_precision": teacher_precision,
            }
            Distiller(make_config(assets, run, train=train), progress=False).train()
            first_rows[teacher_precision] = next(csv.DictReader((run / "metrics.csv").open()))
        exact, rounded = first_rows["no"], first_rows["bf16"]
        assert exact["task"] == rounded["task"]
        assert exact["fine"] != rounded["fine"]
        assert float(rounded["fine"]) == pytest.approx(float(exact["fine"]), rel=0.05)

    with pytest.raises(ConfigError, match="teacher_mixed_precision must be 'bf16' or 'no'"):
        Distiller(make_config(assets, tmp_path / "bad", train={"teacher_mixed_precision": "fp8"}))


def test_distill_says_when_bfloat16_is_computed_by_conversion(assets, tmp_path, capsys):
    from moebius.cli import main

    config = tmp_path / "train.yaml"
    document = make_config(assets, tmp_path / "run", train={"teacher_mixed_precision": "bf16"})
    config.write_text(yaml.safe_dump(document.to_dict()))
    assert main(["distill", "--config", str(config), "--max-steps", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    noted = "by conversion, many times slower" in err and "train.mixed_precision: no" in err
    assert noted is not native_bfloat16()
