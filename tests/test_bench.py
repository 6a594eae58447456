"""`moebius bench` mechanics on tiny models: FLOP counts, report schema, plot. Never timings."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_vae

import moebius
from moebius.bench import fit_exponent, measured_flops, student_flops
from moebius.bench import vae as vae_bench
from moebius.cli import main as cli_main
from moebius.cpu import native_bfloat16
from moebius.nn import engines
from moebius.nn.adopt import adopt
from moebius.nn.engines import CACHE_ENV, MODE_ENV
from moebius.nn.fusion import set_plain
from moebius.nn.kernels import LINEAR_ENGINES


@pytest.mark.parametrize("height,width,batch", [(8, 8, 1), (8, 12, 2), (6, 10, 1)])
def test_closed_form_flops_equal_flop_counter(tiny_config_path, height, width, batch):
    model = set_plain(moebius.build_model(tiny_config_path).eval(), True)
    x = torch.randn(batch, 9, height, width)
    ids = moebius.category_ids("background", batch)
    counted = measured_flops(model, x, torch.full((batch,), 10), ids)
    assert counted == student_flops(model.config, height, width, batch)


def test_released_student_flops_match_the_reference_count():
    # torch.utils.flop_counter counts 316.0 GFLOP for one forward of the authors' code at 512²
    # (latent 64², batch 1; 2 FLOPs per multiply-add, so ≈ the paper's 154 GMAC "GFLOPs").
    config = moebius.build_model.__globals__["resolve_config"]("moebius-0.2b")
    assert round(student_flops(config, 64, 64) / 1e9, 1) == 316.0


def test_fit_exponent_recovers_a_power_law():
    pixels = [256**2, 512**2, 1024**2]
    assert math.isclose(fit_exponent(pixels, [3 * p**1.07 for p in pixels]), 1.07)
    assert fit_exponent([512**2], [1.0]) is None


def test_bench_writes_report_table_and_plot(tmp_path, tiny_config_path, capsys, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "tune")  # the engines are tuned as users' runs are
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "engines"))
    cache = engines.cache_path(threads=1)
    cache.parent.mkdir()
    old = {"engine": "aten", "ms": {}}
    cache.write_text(json.dumps({"schema": engines.SCHEMA, "choices": {"linear old": old}}))
    out = tmp_path / "bench"
    vae_config = tmp_path / "vae.json"  # the real SDXL shape is timed by the README's runs
    vae_config.write_text(json.dumps(dict(tiny_vae().config)))
    args = [
        "bench",
        "--vae-config", str(vae_config),
        "--models", f"{tiny_config_path},sd-tiny",
        "--sizes", "64,128,96x64",
        "--batches", "1,2",
        "--dtypes", "float32,bfloat16",
        "--repeats", "2",
        "--warmup", "0",
        "--steps", "2",
        "--pipeline-sizes", "64",
        "--roofline-size", "128",
        "--threads", "1",
        "--system-allocator",
        "--tune",
        "--out", str(out),
    ]  # fmt: skip
    assert cli_main(args) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["schema"] == "moebius-bench/1"
    labels = {r["label"] for r in report["results"]}
    assert labels == {str(tiny_config_path), f"{tiny_config_path} [plain]", "sd-tiny"}
    assert len(report["results"]) == 3 * 3 * 2 * 2  # subjects × sizes × batches × dtypes
    for row in report["results"]:
        assert row["status"] == "ok"
        lat = row["latency"]
        assert len(lat["runs_ms"]) == 2 and lat["min_ms"] <= lat["median_ms"] <= lat["max_ms"]
        assert row["flops"] > 0 and row["params"] > 0 and row["peak_memory_bytes"] >= 0
        assert row["roofline_fraction"] > 0
        if row["variant"] == "plain":
            w, h = row["size"]
            assert row["flops"] == row["flops_closed_form_plain"]
            assert row["flops"] == student_flops(
                moebius.build_model(tiny_config_path).config, h // 8, w // 8, row["batch"]
            )
    assert set(report["roofline_flops_per_s"]) == {"float32", "bfloat16"}
    # bfloat16 computed by conversion is said to be so, on the CPUs that convert it
    converted = any("no native bfloat16" in note for note in report.get("notes", []))
    assert converted is not native_bfloat16()
    for dtype, rates in report["roofline_by_engine_flops_per_s"].items():
        assert "matmul" in rates and set(rates) <= {"matmul", *LINEAR_ENGINES} - {"aten"}
        assert report["roofline_flops_per_s"][dtype] == max(rates.values())
    ratios = {(r["ratio"], r["batch"], r["dtype"]) for r in report["ratios"]}
    assert ("student/sd-tiny", 2, "float32") in ratios
    assert ("default/plain", 1, "float32") in ratios
    assert ("bfloat16/float32", 2, "bfloat16") in ratios
    assert all(r["size"] == [128, 128] for r in report["ratios"])  # the square size nearest 512
    scaled = [s for s in report["scaling"] if s["label"] == "sd-tiny"]
    assert scaled and all(s["sizes"] == [64, 128] and s["exponent"] is not None for s in scaled)
    assert {p["label"] for p in report["pipeline"]} == {str(tiny_config_path), "sd-tiny"}
    assert all(p["steps"] == 2 and p["total_s"] > 0 for p in report["pipeline"])
    plain_profile = report["profile"][f"{tiny_config_path} [plain]"]["rows"]
    assert {"LocalLambda", "InteractiveLambda", "MixFFN", "DWResBlock"} <= {
        r["module"] for r in plain_profile
    }
    local = report["local_lambda"][str(tiny_config_path)]
    assert local["size"] == [128, 128]
    config = moebius.build_model(tiny_config_path).config
    assert [r["channels"] for r in local["rows"]] == list(config.block_out_channels)
    assert [r["size"] for r in local["rows"]] == [[16, 16], [8, 8], [4, 4]]
    for r in local["rows"]:
        assert r["plain_ms"] > 0 and r["default_ms"] > 0
        assert r["ratio"] == pytest.approx(r["default_ms"] / r["plain_ms"])
        n, c, k = r["size"][0] * r["size"][1], r["channels"], r["channels"] // config.heads
        projections = 2 * r["batch"] * n * c * (c + 2 * k)  # to_q, to_k, to_v
        assert r["plain_flops"] > projections and r["default_flops"] > projections
    assert "## Local-λ, two exact ways" in (out / "bench.md").read_text()
    assert report["accuracy"][0]["dtype"] == "bfloat16"
    assert report["accuracy"][0]["latent_max_abs"] >= 0
    assert report["accuracy"][0]["decoded"]["psnr_db"] > 0
    assert all(0 < p["vae_share"] < 1 and not p["warmed_up"] for p in report["pipeline"])
    vae = report["vae"]
    assert {(r["run"], r["dtype"]) for r in vae["timings"]} == {
        (run, dtype)
        for run in (
            "encode pair, one batch",
            "encode pair, two batches",
            "decode, channels-last",
            "decode, channels-first",
        )
        for dtype in ("float32", "bfloat16")
    }
    assert all(r["median_s"] > 0 for r in vae["timings"])
    work = {(r["run"], r["dtype"]): r["gflop"] for r in vae["timings"]}
    # the same arithmetic in one batch or two, in either layout and dtype
    assert (
        work[("encode pair, one batch", "float32")]
        == work[("encode pair, two batches", "bfloat16")]
        > 0
    )
    assert (
        work[("decode, channels-last", "float32")]
        == work[("decode, channels-first", "bfloat16")]
        > 0
    )
    errors = vae["errors"]
    assert errors["dtype"] == "bfloat16" and errors["tile"] == 32
    assert errors["decode"]["psnr_db"] > 20 and errors["tiled_decode"]["max_abs"] >= 0
    chosen = report["engines"]
    assert chosen["mode"] == "tune" and chosen["choices"]
    assert Path(chosen["cache"]) == cache
    assert "linear old" not in json.loads(cache.read_text())["choices"]  # --tune: timed anew
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "bench.md").read_text()
    assert text.index("## Ratios") < text.index("## Per-step latency")
    assert "student/sd-tiny" in text
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--sizes", "500", "multiples of 32"),
        ("--sizes", "big", "bad size"),
        ("--dtypes", "float8", "unknown dtypes"),
        ("--modes", "jit", "unknown modes"),
        ("--models", "no-such-model", "cannot build model"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, option, value, message):
    args = ["bench", option, value, "--out", str(tmp_path / "x"), "--pipeline-sizes", ""]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()


def test_bench_times_exported_runtimes_side_by_side(tmp_path, tiny_config_path):
    out = tmp_path / "bench"
    vae_config = tmp_path / "vae.json"
    vae_config.write_text(json.dumps(dict(tiny_vae().config)))
    args = [
        "bench",
        "--models", str(tiny_config_path),
        "--backends", "torch,onnxruntime",
        "--vae-config", str(vae_config),
        "--sizes", "64",
        "--batches", "2",
        "--dtypes", "float32",
        "--repeats", "1",
        "--steps", "2",
        "--pipeline-sizes", "64",
        "--roofline-size", "64",
        "--threads", "1",
        "--no-plain", "--no-profile", "--no-accuracy",
        "--out", str(out),
    ]  # fmt: skip
    assert cli_main(args) == 0
    report = json.loads((out / "bench.json").read_text())
    edge = {r["variant"] for r in report["results"] if r["role"] == "edge"}
    assert edge == {
        "onnxruntime float32",
        "onnxruntime float32, int8 weights",
        "onnxruntime float32, int8 dynamic",
    }
    torch_row = next(r for r in report["results"] if r["role"] == "student")
    for row in report["results"]:
        assert row["status"] == "ok" and row["flops"] == torch_row["flops"]
    # 8-bit integer products: no float roofline bounds them, so no share of it is reported
    shares = {
        r["variant"]: r["roofline_fraction"] for r in report["results"] if r["role"] == "edge"
    }
    assert shares["onnxruntime float32, int8 dynamic"] is None
    assert shares["onnxruntime float32"] > 0
    ratios = {r["ratio"] for r in report["ratios"]}
    assert {f"{v}/torch float32" for v in edge} | {f"{v}/fastest torch" for v in edge} <= ratios
    assert {p["label"] for p in report["pipeline"]} == {str(tiny_config_path)} | {
        f"{tiny_config_path} [{v}]" for v in edge
    }
    quality = {row["label"]: row for row in report["edge_quality"]["rows"]}
    assert set(quality) == {"reference"} | edge
    assert quality["onnxruntime float32"]["psnr_db"] > 40
    assert len(quality["onnxruntime float32"]["latent_mean_abs_by_step"]) == 2
    assert {t["variant"] for t in report["edge_timings"]} == edge
    assert all(t["export_s"] > 0 and t["load_s"] > 0 for t in report["edge_timings"])
    text = (out / "bench.md").read_text()
    assert "## Exported runtimes: quality" in text and "## Exported runtimes: export" in text


def test_random_weights_are_the_same_in_every_run(tiny_config_path):
    import torch

    from moebius.bench.runner import Benchmark, BenchSettings

    bench = Benchmark(
        BenchSettings(models=[str(tiny_config_path)], plain=False), log=lambda _: None
    )
    first = bench._subjects()[0].module.state_dict()
    torch.rand(7)  # whatever ran in between
    second = bench._subjects()[0].module.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_vae_work_counted_from_shapes_is_what_it_computes():
    # Without the mid-block attention: torch's counter does not count the CPU's fused attention
    # kernel (on the meta device attention decomposes into counted products).
    vae = adopt(tiny_vae(mid_block_add_attention=False))
    pair, latent = torch.rand(2, 3, 64, 96) * 2 - 1, torch.randn(1, 4, 8, 12)
    counted = vae_bench.work(vae, (96, 64))
    assert counted["encode pair, one batch"] * 1e9 == measured_flops(
        lambda: vae.encode(pair.contiguous(memory_format=torch.channels_last))
    )
    assert counted["decode, channels-last"] * 1e9 == measured_flops(
        lambda: vae.decode(latent.contiguous(memory_format=torch.channels_last))
    )
