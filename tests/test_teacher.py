"""The PixelHacker teacher against the authors' tiny fixture and the released key layout."""

import json

import pytest
import torch
from helpers import read_key_manifest
from safetensors.torch import load_file

import moebius
from moebius.errors import ConfigError
from moebius.models.checkpoint import load_state_dict_strict
from moebius.models.kd_pairs import coarse_kd_blocks
from moebius.models.pixelhacker import PixelHackerConfig


@pytest.fixture(scope="module")
def teacher_fixture(fixtures_dir) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures_dir / "pixelhacker_tiny_fixture.safetensors"))


@pytest.fixture(scope="module")
def teacher_state(teacher_fixture) -> dict[str, torch.Tensor]:
    return {k: v for k, v in teacher_fixture.items() if not k.startswith("__")}


@pytest.fixture(scope="module")
def teacher_config(fixtures_dir) -> dict:
    """The authors' constructor arguments, tagged the way users pass them."""
    document = json.loads((fixtures_dir / "pixelhacker_tiny_fixture.json").read_text())
    return {**document["model_config"], "model_type": "PixelHacker"}


@pytest.fixture(scope="module")
def teacher(teacher_config, teacher_state):
    model = moebius.build_model(teacher_config)
    load_state_dict_strict(model, teacher_state)
    return model.eval()


def _run(model, fixture, dtype=torch.float32):
    with torch.no_grad():
        return model(
            fixture["__input__.x"].to(dtype),
            fixture["__input__.timesteps"],
            fixture["__input__.input_ids"],
        )


def _check_blocks(block_outputs, fixtures_dir, relative: float):
    hooks = load_file(str(fixtures_dir / "pixelhacker_tiny_fixture_blocks.safetensors"))
    assert len(block_outputs) == 9
    for i, block in enumerate(block_outputs):
        ref = hooks[f"__hook__.block_outputs.{i}"].to(block.dtype)
        assert block.shape == ref.shape, f"block {i}"
        assert (block - ref).abs().max() <= relative * ref.abs().max(), f"block {i}"


def test_fixture_float32(teacher, teacher_fixture, fixtures_dir):
    out = _run(teacher, teacher_fixture)
    # One near-zero GLA output is amplified by its RMSNorm: float32 noise ~3e-4 against the
    # float64 reference (docs/models.md, "Fixtures and tolerances").
    assert (out.sample - teacher_fixture["__output__.sample"]).abs().max() <= 1e-3
    _check_blocks(out.block_outputs, fixtures_dir, relative=5e-4)
    # The coarse-KD target is up0: deepest width at latent/4 (1280×16×16 at 512 px).
    _, kd_block = coarse_kd_blocks("moebius", "pixelhacker")
    assert out.block_outputs[kd_block].shape[1:] == (128, 2, 2)


def test_fixture_float64(teacher_config, teacher_state, teacher_fixture, fixtures_dir):
    model = moebius.build_model(teacher_config).double().eval()
    load_state_dict_strict(model, teacher_state)
    out = _run(model, teacher_fixture, torch.float64)
    expected = teacher_fixture["__output__.sample"].double()
    assert (out.sample - expected).abs().max() <= 1e-6
    _check_blocks(out.block_outputs, fixtures_dir, relative=1e-6)


def test_fixture_16x16_float32(teacher, fixtures_dir):
    fixture = load_file(str(fixtures_dir / "pixelhacker_tiny_fixture_16x16.safetensors"))
    out = _run(teacher, fixture)
    assert out.sample.shape == (2, 4, 16, 16)
    assert (out.sample - fixture["__output__.sample"]).abs().max() <= 1e-4


@pytest.mark.parametrize("size", [(8, 12), (10, 6)])
def test_non_square_and_odd_latents(teacher, size):
    x = torch.randn(1, 9, *size)
    with torch.no_grad():
        out = teacher(x, 500, moebius.category_ids("background", 1))
    assert out.sample.shape == (1, 4, *size)
    assert torch.isfinite(out.sample).all()
    assert out.block_outputs[-1].shape[2:] == size


def test_released_layout_and_parameter_count(fixtures_dir):
    with torch.device("meta"):
        model = moebius.build_model("pixelhacker")
    official = read_key_manifest(fixtures_dir / "pixelhacker_official_state_dict.tsv")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == 862_251_708
    assert model.config.model_type == "pixelhacker" and model.config.sample_size == 64


def test_load_model_from_json_config_and_authors_bin(
    tmp_path, teacher_config, teacher_state, teacher_fixture
):
    config_path = tmp_path / "pixelhacker_tiny.json"
    config_path.write_text(json.dumps(teacher_config))
    weights = tmp_path / "diffusion_pytorch_model.bin"
    torch.save(teacher_state, weights)
    model = moebius.load_model(config_path, weights)
    assert not model.training
    out = _run(model, teacher_fixture)
    assert (out.sample - teacher_fixture["__output__.sample"]).abs().max() <= 1e-3


def test_save_pretrained_round_trip(tmp_path, teacher):
    moebius.save_pretrained(teacher, tmp_path / "teacher")
    reloaded = moebius.from_pretrained(tmp_path / "teacher")
    assert isinstance(reloaded.config, PixelHackerConfig)
    assert reloaded.config == teacher.config
    original = teacher.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in reloaded.state_dict().items())


def test_unsupported_authors_options_are_config_errors(teacher_config):
    with pytest.raises(ConfigError, match="use_linear_projection"):
        moebius.build_model({**teacher_config, "use_linear_projection": True})
    with pytest.raises(ConfigError, match="unknown PixelHacker option"):
        moebius.build_model({**teacher_config, "block_out_channel": [32]})
