"""The student network against the authors' fixture, the released key layout, and file formats."""

import json
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml
from helpers import read_key_manifest
from safetensors.torch import save_file

import moebius
from moebius.cli import main as cli_main
from moebius.errors import ConfigError
from moebius.models.checkpoint import load_state_dict_strict
from moebius.models.registry import CONFIG_DIR, PRESETS, resolve_config
from moebius.nn.lambda_layers import InteractiveLambda, LocalLambda, resample_position_table
from moebius.weights import BUNDLED


def _fixture_model(tiny_config_path, tiny_state_dict):
    model = moebius.build_model(tiny_config_path)
    load_state_dict_strict(model, tiny_state_dict)
    return model.eval()


def _run_fixture(model, fixture):
    with torch.no_grad():
        return model(
            fixture["__input__.x"], fixture["__input__.timesteps"], fixture["__input__.input_ids"]
        )


def test_fixture_outputs_match(tiny_config_path, tiny_state_dict, tiny_fixture):
    out = _run_fixture(_fixture_model(tiny_config_path, tiny_state_dict), tiny_fixture)
    assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-5
    assert len(out.block_outputs) == 6
    for i, block in enumerate(out.block_outputs):
        ref = tiny_fixture[f"__output__.block_outputs.{i}"]
        assert block.shape == ref.shape
        assert (block - ref).abs().max() <= 1e-5 * ref.abs().max(), f"block {i}"


def test_fused_model_matches_fixture(tiny_config_path, tiny_state_dict, tiny_fixture):
    model = _fixture_model(tiny_config_path, tiny_state_dict).fuse()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    out = _run_fixture(model, tiny_fixture)
    assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-4


def test_fuse_refuses_training_mode(tiny_config_path):
    with pytest.raises(RuntimeError, match="eval"):
        moebius.build_model(tiny_config_path).fuse()


def test_released_layout_and_parameter_count(fixtures_dir):
    with torch.device("meta"):
        model = moebius.build_model("moebius-0.2b")
    official = read_key_manifest(fixtures_dir / "moebius_official_state_dict.tsv")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == 226_041_531


def test_authors_yaml_ignores_mix_mlp_ratio(tmp_path, tiny_config_path):
    text = tiny_config_path.read_text().replace("mix_mlp_ratio: 2.5", "mix_mlp_ratio: 4.0")
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert moebius.build_model(path).config.mix_mlp_ratio == 2.5


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_checkpoint_files_load(tmp_path, suffix, tiny_config_path, tiny_state_dict, tiny_fixture):
    path = tmp_path / f"diffusion_pytorch_model{suffix}"
    if suffix == ".bin":
        torch.save(tiny_state_dict, path)
    else:
        save_file(tiny_state_dict, str(path))
    model = moebius.load_model(tiny_config_path, path)
    assert not model.training
    out = _run_fixture(model, tiny_fixture)
    assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-5


def test_truncated_checkpoint_is_a_clear_error(tmp_path, tiny_config_path, tiny_state_dict):
    path = tmp_path / "model.bin"
    torch.save(tiny_state_dict, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(moebius.CheckpointError, match="cannot read checkpoint"):
        moebius.load_model(tiny_config_path, path)


def test_wrong_keys_are_named(tmp_path, tiny_config_path, tiny_state_dict):
    state = dict(tiny_state_dict)
    state["diff_model.extra.weight"] = state.pop("diff_model.conv_in.conv_dw.weight")
    state["embedding_layer.weight"] = torch.zeros(20, 7)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(moebius.CheckpointError) as info:
        moebius.load_model(tiny_config_path, path)
    message = str(info.value)
    assert "diff_model.conv_in.conv_dw.weight" in message
    assert "diff_model.extra.weight" in message
    assert "embedding_layer.weight" in message and "(20, 7)" in message


@pytest.mark.parametrize("size", [(8, 12), (16, 16), (12, 8), (4, 4)])
def test_other_latent_sizes_run(tiny_config_path, tiny_state_dict, size):
    model = _fixture_model(tiny_config_path, tiny_state_dict)
    x = torch.randn(2, 9, *size)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 500]), moebius.category_ids("background", 2))
    assert out.sample.shape == (2, 4, *size)
    assert torch.isfinite(out.sample).all()


def test_position_table_is_untouched_at_native_size():
    table = torch.randn(64, 10, 4, 1)
    assert resample_position_table(table, (8, 8)) is table


def test_position_table_resampling_keeps_grid_layout():
    # A table that varies only along x must still vary only along x after resampling.
    side = 8
    ramp = torch.linspace(-1, 1, side)
    table = ramp.repeat(side).reshape(side * side, 1, 1, 1).expand(-1, 2, 3, 1).contiguous()
    resized = resample_position_table(table, (6, 12)).reshape(6, 12, 2, 3)
    assert torch.allclose(resized[0], resized[5], atol=1e-6)
    assert (resized[0, 1:, 0, 0] > resized[0, :-1, 0, 0]).all()


def test_interactive_lambda_matches_literal_formula():
    torch.manual_seed(0)
    layer = InteractiveLambda(
        channels=16, context_dim=12, context_tokens=10, positions=16, heads=2
    ).eval()
    x, context = torch.randn(2, 16, 4, 4), torch.randn(2, 10, 12)
    with torch.no_grad():
        y = layer(x, context)
        q = layer.norm_q(layer.to_q(x)).reshape(2, 2, 8, 16)
        k = layer.to_k(context).softmax(dim=1)  # (B, m, k): softmax over the m tokens
        v = layer.norm_v(layer.to_v(context).transpose(1, 2))  # (B, v, m)
        expected = torch.zeros(2, 2, 8, 16)
        for n in range(16):
            lam = k.transpose(1, 2) @ v.transpose(1, 2)  # content lambda (B, k, v)
            lam = lam + torch.einsum("mk,bvm->bkv", layer.rel_pos_emb[n, :, :, 0], v)
            expected[..., n] = torch.einsum("bhk,bkv->bhv", q[..., n], lam)
    assert torch.allclose(y, expected.reshape(2, 16, 4, 4), atol=1e-5)


@pytest.mark.parametrize("channels,heads", [(30, 8), (16, 0)])
def test_lambda_layers_need_channels_divisible_by_heads(channels, heads):
    message = f"{channels} channels and {heads} heads"
    with pytest.raises(ConfigError, match=message):
        LocalLambda(channels, heads)
    with pytest.raises(ConfigError, match=message):
        InteractiveLambda(channels, context_dim=12, context_tokens=10, positions=16, heads=heads)


@pytest.mark.parametrize("field", [14, 0, -3])
def test_local_lambda_needs_an_odd_receptive_field(field):
    with pytest.raises(ConfigError, match=f"positive odd number, got {field}"):
        LocalLambda(16, 2, receptive_field=field)


def test_bad_lambda_settings_in_a_config_are_config_errors(tiny_config_path):
    config = resolve_config(tiny_config_path)
    with pytest.raises(ConfigError, match="32 channels and 6 heads"):
        moebius.build_model(replace(config, heads=6))
    with pytest.raises(ConfigError, match="receptive field"):
        moebius.build_model(replace(config, local_receptive_field=8))


def test_every_bundled_config_builds(tiny_config_path):
    with torch.device("meta"):
        for config in (*PRESETS, tiny_config_path, BUNDLED["moebius-demo"] / "model"):
            moebius.build_model(config)


def test_save_and_from_pretrained_round_trip(
    tmp_path, tiny_config_path, tiny_state_dict, tiny_fixture
):
    model = _fixture_model(tiny_config_path, tiny_state_dict)
    moebius.save_pretrained(model, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    again = moebius.from_pretrained(tmp_path / "saved")
    assert again.config == model.config
    assert torch.equal(
        _run_fixture(again, tiny_fixture).sample, _run_fixture(model, tiny_fixture).sample
    )


def test_convert_command(tmp_path, tiny_config_path, tiny_state_dict, tiny_fixture):
    checkpoint = tmp_path / "diffusion_pytorch_model.bin"
    torch.save(tiny_state_dict, checkpoint)
    assert (
        cli_main(
            ["convert", str(checkpoint), str(tmp_path / "out"), "--config", str(tiny_config_path)]
        )
        == 0
    )
    out = _run_fixture(moebius.from_pretrained(tmp_path / "out"), tiny_fixture)
    assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-5


def test_convert_command_reports_bad_checkpoint(tmp_path, tiny_config_path, capsys):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"not a checkpoint")
    assert (
        cli_main(["convert", str(bad), str(tmp_path / "out"), "--config", str(tiny_config_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read checkpoint" in err
    assert not (tmp_path / "out").exists()


def _authors_constructor_args(yaml_path) -> dict:
    """A config as the authors' class records its constructor arguments: their YAML's ``model``
    section plus the latent side ``sample_size`` (what their training script adds)."""
    document = yaml.safe_load(yaml_path.read_text())
    return {**document["model"], "sample_size": document["data"]["image_size"] // 8}


def test_authors_config_json_builds_the_fixture(
    tmp_path, tiny_config_path, tiny_state_dict, tiny_fixture
):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_authors_constructor_args(tiny_config_path)))
    checkpoint = tmp_path / "diffusion_pytorch_model.bin"
    torch.save(tiny_state_dict, checkpoint)
    for model in (moebius.load_model(config, checkpoint), moebius.load_model(tmp_path, checkpoint)):
        out = _run_fixture(model, tiny_fixture)
        assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-5


def test_convert_with_a_diffusers_written_authors_config(
    tmp_path, tiny_config_path, tiny_state_dict, tiny_fixture
):
    # diffusers' save_config names the class in _class_name and writes no model_type.
    args = _authors_constructor_args(tiny_config_path)
    args = {"_class_name": args.pop("model_type"), "_diffusers_version": "0.30.0", **args}
    config = tmp_path / "config.json"
    config.write_text(json.dumps(args))
    checkpoint = tmp_path / "diffusion_pytorch_model.bin"
    torch.save(tiny_state_dict, checkpoint)
    assert (
        cli_main(["convert", str(checkpoint), str(tmp_path / "out"), "--config", str(config)]) == 0
    )
    out = _run_fixture(moebius.from_pretrained(tmp_path / "out"), tiny_fixture)
    assert (out.sample - tiny_fixture["__output__.sample"]).abs().max() <= 1e-5


def test_authors_model_section_alone_is_the_released_student():
    # Without sample_size the tables are built for 512 px, the size of the released weights.
    section = yaml.safe_load((CONFIG_DIR / "moebius-0.2b.yaml").read_text())["model"]
    assert resolve_config(section) == resolve_config("moebius-0.2b")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"use_lambda_cross_attn": False}, "use_lambda_cross_attn=False is not supported"),
        ({"mid_block_type": "DWTFMidBlock2D"}, "mid_block_type"),
        (
            {"down_block_types": ["DWMixTFDownBlock2D"] * 2},
            "DWMixTFDownBlock2D at each of its 3 levels",
        ),
        ({"attention_head_dim": [8, 4, 8]}, "one value of heads for all levels"),
        ({"block_out_channel": [32, 32, 64]}, "unknown Moebius option 'block_out_channel'"),
        ({"block_out_channels": 64}, "block_out_channels must list the level widths"),
        ({"cross_attention_dim": "wide"}, "cross_attention_dim must be an integer"),
        ({"block_out_channels": [32, 48, 64]}, "width 48 does not split into 32 norm groups"),
        ({"model_type": ["UNet"]}, "model_type must be a string"),
    ],
)
def test_bad_authors_config_is_one_config_error(
    tmp_path, tiny_config_path, capsys, change, message
):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**_authors_constructor_args(tiny_config_path), **change}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        moebius.build_model(config)
    checkpoint = tmp_path / "diffusion_pytorch_model.bin"  # never read: the config fails first
    assert (
        cli_main(["convert", str(checkpoint), str(tmp_path / "out"), "--config", str(config)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_authors_yaml_without_image_size_is_a_config_error(tmp_path, tiny_config_path):
    document = yaml.safe_load(tiny_config_path.read_text())
    del document["data"]
    with pytest.raises(ConfigError, match="data.image_size"):
        moebius.build_model(document)
    with pytest.raises(ConfigError, match="model section"):
        moebius.build_model({"model": "moebius"})


def test_scalar_timestep_and_bfloat16(tiny_config_path, tiny_state_dict, tiny_fixture):
    model = _fixture_model(tiny_config_path, tiny_state_dict).to(torch.bfloat16)
    x = tiny_fixture["__input__.x"].to(torch.bfloat16)
    with torch.no_grad():
        out = model(x, 10, tiny_fixture["__input__.input_ids"])
    assert out.sample.dtype == torch.bfloat16 and torch.isfinite(out.sample.float()).all()


def test_import_is_light():
    code = (
        "import sys, moebius; heavy = [m for m in ('diffusers', 'gradio', 'cv2', 'transformers') "
        "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os
    import stat

    from moebius.files import atomic_write

    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out.txt", lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
