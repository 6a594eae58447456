"""moebius.runtime / moebius.cpu: what ``--dtype auto`` resolves to on CPUs with and without
native bfloat16 (a faked /proc/cpuinfo) and on GPUs."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_model, tiny_vae
from PIL import Image

from moebius import cpu
from moebius.cli import main
from moebius.errors import InputError
from moebius.nn import engines
from moebius.pipeline import MoebiusInpaintPipeline
from moebius.runtime import resolve_dtype

CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
{generation}model name\t: {model}
flags\t\t: fpu sse sse2 avx avx2 avx512f {flags}

processor\t: 1
model name\t: {model}
flags\t\t: fpu
"""


@pytest.fixture
def fake_cpu(tmp_path, monkeypatch):
    """Point moebius.cpu at a written /proc/cpuinfo."""

    def make(
        flags: str,
        model: str = "Test CPU 9000",
        vendor: str = "GenuineIntel",
        family: int | None = None,
    ):
        """``family``: write x86 "cpu family" and "model" (17) lines; without it, none."""
        generation = "" if family is None else f"cpu family\t: {family}\nmodel\t\t: 17\n"
        path = tmp_path / "cpuinfo"
        path.write_text(
            CPUINFO.format(flags=flags, model=model, vendor=vendor, generation=generation)
        )
        monkeypatch.setattr(cpu, "CPUINFO", path)
        cpu._cpuinfo.cache_clear()

    yield make
    cpu._cpuinfo.cache_clear()


def test_generations_sold_under_one_name_are_told_apart(fake_cpu):
    """Two EPYC generations with the same extensions: reports name each one's family and
    model, and a report of one is not counted as a run on the other."""
    facts = []
    for family in (25, 26):
        fake_cpu("avx512_bf16", model="AMD EPYC", vendor="AuthenticAMD", family=family)
        facts.append(cpu.cpu_facts())
    zen_a, zen_b = facts
    assert cpu.describe_cpu(zen_a) == "AMD EPYC family 25 model 17 with AVX-512 BF16"
    assert cpu.same_cpu_kind(zen_a, dict(zen_a)) and not cpu.same_cpu_kind(zen_a, zen_b)
    older = {k: v for k, v in zen_a.items() if k not in ("cpu_signature", "cpu_generation")}
    assert not cpu.same_cpu_kind(older, older)  # unknown generation: never counted as this one
    assert cpu.describe_cpu(older) == "AMD EPYC with AVX-512 BF16"


@pytest.mark.parametrize(
    "flags, native",
    [("avx512_bf16 avx512_vnni", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False)],
)
def test_native_bfloat16_is_read_from_the_cpu_flags(fake_cpu, flags, native):
    fake_cpu(flags, model="Some Xeon")
    assert cpu.native_bfloat16() is native
    assert cpu.cpu_model() == "Some Xeon"
    assert "avx512f" in cpu.cpu_flags()


def test_cpus_sold_under_one_name_tune_apart(fake_cpu, tmp_path, monkeypatch):
    """Cloud VMs report "AMD EPYC" for parts with and without AVX-512 BF16: engines tuned on
    one must not be read on the other, and reports must say which one they ran on."""
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path))
    fake_cpu("avx512_bf16", model="AMD EPYC", vendor="AuthenticAMD")
    with_bf16 = engines.cache_path(threads=2)
    assert engines.cache_path(threads=2) == with_bf16  # stable on one CPU
    assert cpu.vector_extensions() == ["AVX2", "AVX-512", "AVX-512 BF16"]
    fake_cpu("avx512_vnni", model="AMD EPYC", vendor="AuthenticAMD")
    without = engines.cache_path(threads=2)
    assert without != with_bf16 and without.parent == with_bf16.parent
    assert "AMD-EPYC" in without.name and "2t" in without.name
    assert cpu.describe_cpu({"cpu": "AMD EPYC", "cpu_extensions": cpu.vector_extensions()}) == (
        "AMD EPYC with AVX-512"
    )
    assert cpu.describe_cpu({"cpu": "AMD EPYC", "native_bfloat16": True}) == (
        "AMD EPYC with native bfloat16"
    )


@pytest.mark.parametrize(
    "flags, speedup, expected",
    [
        ("amx_bf16", 2.5, torch.bfloat16),  # native and measured faster
        ("avx512_bf16", 1.6, torch.bfloat16),
        ("avx512_bf16", 1.05, torch.float32),  # native, but not faster here
        ("avx512_bf16", None, torch.float32),  # timing is off: nothing measured
        ("avx2", 3.0, torch.float32),  # converted, not native: never chosen
    ],
)
def test_auto_on_the_cpu(fake_cpu, monkeypatch, flags, speedup, expected):
    fake_cpu(flags)
    monkeypatch.setattr(engines, "bfloat16_speedup", lambda: speedup)
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_dtype("auto", torch.device("cuda")) == expected


def test_float16_on_the_cpu_and_unknown_names_are_refused():
    with pytest.raises(InputError, match="float16 needs a GPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(InputError, match="unknown dtype"):
        resolve_dtype("half", torch.device("cpu"))


def test_the_bfloat16_speedup_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(engines.MODE_ENV, "tune")
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path))
    speedup = engines.bfloat16_speedup()
    assert speedup is not None and speedup > 0
    document = json.loads(engines.cache_path().read_text())
    assert {key.split()[1] for key in document["choices"]} == {"float32", "bfloat16"}
    assert engines.bfloat16_speedup() == speedup  # from the cache: nothing timed again
    assert json.loads(engines.cache_path().read_text()) == document


@pytest.mark.parametrize("flags, expected", [("avx512_bf16", "bfloat16"), ("avx2", "float32")])
def test_inpaint_runs_in_what_auto_resolves_to(fake_cpu, tmp_path, monkeypatch, flags, expected):
    """``moebius inpaint`` without ``--dtype``: the CPU's flags are faked, the bfloat16 speedup
    is read from a cache holding timings of the product that decides it (2.5× faster), so the
    resolution itself runs as on a user's machine."""
    fake_cpu(flags)
    monkeypatch.setenv(engines.MODE_ENV, "tune")
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "engines"))
    rows, k, n = engines.SPEEDUP_PRODUCT
    measured = {
        f"linear {dtype} {rows}x{k}x{n}": {"engine": "aten", "ms": {"aten": ms}}
        for dtype, ms in (("float32", 10.0), ("bfloat16", 4.0))
    }
    cache = engines.cache_path(threads=1)
    cache.parent.mkdir()
    cache.write_text(json.dumps({"schema": engines.SCHEMA, "choices": measured}))
    model = tmp_path / "model"
    MoebiusInpaintPipeline(tiny_model(), tiny_vae()).save_pretrained(model)
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    images.mkdir()
    masks.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "a.png")
    hole = np.zeros((64, 64), np.uint8)
    hole[16:40, 20:44] = 255
    Image.fromarray(hole).save(masks / "a.png")
    argv = ["inpaint", "--images", images, "--masks", masks, "--out", out, "--model", model]
    assert main([*map(str, argv), "--steps", "2", "--threads", "1", "-q"]) == 0
    assert json.loads((out / "run.json").read_text())["dtype"] == expected
    assert (out / "a.png").is_file()
    choices = json.loads(cache.read_text())["choices"]
    assert all(choices[key] == entry for key, entry in measured.items())  # read, not retimed


@pytest.mark.parametrize("flags, noted", [("avx2", True), ("avx512_bf16", False)])
def test_explicit_bfloat16_without_native_support_gets_a_note(
    fake_cpu, tmp_path, capsys, flags, noted
):
    """``--dtype bfloat16`` is honoured everywhere, but where the CPU converts bfloat16 (many
    times slower than float32) the user is told, once, on stderr."""
    fake_cpu(flags)
    model = tmp_path / "model"
    MoebiusInpaintPipeline(tiny_model(), tiny_vae()).save_pretrained(model)
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(tmp_path / "a.png")
    hole = np.zeros((64, 64), np.uint8)
    hole[16:40, 20:44] = 255
    Image.fromarray(hole).save(tmp_path / "m.png")
    argv = [tmp_path / "a.png", tmp_path / "m.png", "-o", tmp_path / "out.png", "--model", model]
    assert main(["inpaint", *map(str, argv), "--steps", "2", "--dtype", "bfloat16", "-q"]) == 0
    err = capsys.readouterr().err
    assert ("no native bfloat16" in err) is noted
    assert err.count("no native bfloat16") <= 1
    assert (tmp_path / "out.png").is_file()
