"""Edge deployment: the λ layers' export forms against the eager fast path, ONNX and OpenVINO
exports of the tiny student + tiny VAE against PyTorch (one step, the VAE, whole inpaintings
given the same noise), the runtime without PyTorch, bad export directories, and the CLI on the
bundled demo model."""

import copy
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import tiny_model, tiny_vae
from PIL import Image
from serving import png, serve
from skimage import data

import moebius
from moebius.cli import main
from moebius.compositing import prepare
from moebius.errors import CheckpointError, InputError
from moebius.export.exporter import ExportOptions, export_loaded, load_for_export
from moebius.export.manifest import MANIFEST_FILE, read_manifest
from moebius.export.runtime import ExportedInpaintPipeline
from moebius.nn import InteractiveLambda, LocalLambda, MixFFN, Upsample
from moebius.nn.embeddings import TimestepEmbedding, timestep_sinusoids
from moebius.nn.export_forms import position_table
from moebius.nn.fusion import set_export
from moebius.nn.lambda_layers import resample_position_table
from moebius.pipeline import MoebiusInpaintPipeline
from moebius.settings import InpaintSettings, Prefill

SRC = Path(moebius.__file__).resolve().parent.parent


def _ids(categories) -> torch.Tensor:
    return torch.cat([moebius.category_ids(c, 1) for c in categories])


# ------------------------------------------------------------------ export forms, eagerly
@pytest.mark.parametrize("side,size", [(8, (8, 8)), (8, (12, 20)), (8, (4, 6)), (8, (5, 16))])
def test_position_table_matches_interpolate(side, size):
    # grow, shrink (antialiased), and one side each way (antialiased, as PyTorch does)
    torch.manual_seed(0)
    table = torch.randn(side * side, 10, 6, 1) * 3
    expected = resample_position_table(table, size).squeeze(-1)
    got = position_table(table, side, size)
    if size == (side, side):
        assert torch.equal(got, expected)  # the identity, exactly
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("channels,heads,field,size", [(32, 4, 5, (6, 10)), (16, 8, 15, (9, 4))])
def test_local_lambda_export_form_matches_fast_path(channels, heads, field, size):
    torch.manual_seed(0)
    layer = LocalLambda(channels, heads, receptive_field=field).eval()
    exported = copy.deepcopy(layer)
    exported.export = True
    x = torch.randn(2, size[0] * size[1], channels)
    with torch.inference_mode():
        expected, got = layer.forward_tokens(x, size), exported.forward_tokens(x, size)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_interactive_lambda_export_form_matches_fast_path():
    torch.manual_seed(0)
    layer = InteractiveLambda(32, 24, 10, 64, heads=4).eval()
    exported = copy.deepcopy(layer)
    exported.export = True
    context = torch.randn(2, 10, 24)
    for size in ((8, 8), (12, 4)):
        x = torch.randn(2, size[0] * size[1], 32)
        with torch.inference_mode():
            expected = layer.forward_tokens(x, context, size)
            got = exported.forward_tokens(x, context, size)
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("channels,height,width", [(8, 5, 7), (16, 4, 4), (3, 1, 6)])
def test_upsample_export_form_matches_upsample_then_conv(channels, height, width):
    torch.manual_seed(0)
    layer = Upsample(channels)
    x = torch.randn(2, channels, height, width)
    with torch.inference_mode():
        expected = layer(x)
        layer.export = True
        got = layer(x, size=(2 * height, 2 * width))
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_mixffn_export_form_matches_fast_path():
    torch.manual_seed(0)
    layer = MixFFN(16, ratio=2.5).eval()
    exported = copy.deepcopy(layer)
    exported.export = True
    size = (5, 7)
    x = torch.randn(2, size[0] * size[1], 16)
    with torch.inference_mode():
        expected, got = layer.forward_tokens(x, size), exported.forward_tokens(x, size)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


# ------------------------------------------------------------------ the exports
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "pipeline"
    MoebiusInpaintPipeline(tiny_model(), tiny_vae()).save_pretrained(directory)
    return directory


# name → (format, storage dtype, weights): the float32 exports most tests run, and the reduced
# precisions of moebius export --dtype / --weights
EXPORTS = {
    "onnx": ("onnx", "float32", "float"),
    "openvino": ("openvino", "float32", "float"),
    "onnx-int8": ("onnx", "float32", "int8"),
    "onnx-int8-dynamic": ("onnx", "float32", "int8-dynamic"),
    "openvino-int8": ("openvino", "float32", "int8"),
    "openvino-int8-static": ("openvino", "float32", "int8-static"),
    "onnx-float16": ("onnx", "float16", "float"),
}


@pytest.fixture(scope="module")
def exports(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny pipeline exported in every format and precision above (one trace)."""
    root = tmp_path_factory.mktemp("exports")
    pipe, source = load_for_export(str(tiny_dir))
    targets = {root / name: ExportOptions(*options) for name, options in EXPORTS.items()}
    export_loaded(pipe, targets, source, threads=1, log=lambda _: None)
    return {name: root / name for name in EXPORTS}


@pytest.fixture(scope="module")
def onnx_dir(exports) -> Path:
    return exports["onnx"]


@pytest.fixture(scope="module")
def openvino_dir(exports) -> Path:
    return exports["openvino"]


@pytest.fixture(scope="module")
def torch_pipe() -> MoebiusInpaintPipeline:
    pipe = MoebiusInpaintPipeline(tiny_model().fuse(), tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def exported(request, onnx_dir, openvino_dir) -> ExportedInpaintPipeline:
    directory = onnx_dir if request.param == "onnxruntime" else openvino_dir
    pipe = ExportedInpaintPipeline.from_exported(directory, threads=1)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.backend == request.param
    return pipe


def test_manifest(onnx_dir, openvino_dir, tiny_dir):
    for directory, fmt in ((onnx_dir, "onnx"), (openvino_dir, "openvino")):
        manifest = read_manifest(directory)
        doc = manifest.document
        assert manifest.format == fmt and doc["export"]["opset"] >= 17
        assert (
            doc["scheduler"]
            == MoebiusInpaintPipeline.from_pretrained(tiny_dir).schedule.to_config()
        )
        assert (manifest.image_size, manifest.pixel_multiple) == (64, 32)
        weights = tiny_dir / "model" / "model.safetensors"
        import hashlib

        assert hashlib.sha256(weights.read_bytes()).hexdigest() in doc["source"]["sha256"].values()
        assert doc["check"]["noise_max_abs_diff"] <= 1e-4 * doc["check"]["noise_max_abs"]
        assert doc["versions"]["onnx"] and doc["versions"]["torch"]
    assert sorted(p.name for p in openvino_dir.iterdir()) == [
        "denoiser.bin", "denoiser.xml", MANIFEST_FILE, "vae_decoder.bin", "vae_decoder.xml",
        "vae_encoder.bin", "vae_encoder.xml",
    ]  # fmt: skip


def _constant_types(directory: Path) -> set[str]:
    """The element types of the denoiser's stored weights."""
    if (directory / "denoiser.onnx").is_file():
        import onnx

        model = onnx.load(str(directory / "denoiser.onnx"))
        return {
            onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name for i in model.graph.initializer
        }
    import openvino as ov

    model = ov.Core().read_model(str(directory / "denoiser.xml"))
    return {
        op.get_element_type().get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
    }


def _operators(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


# the denoiser's weights' element type and the operators that use them, per reduced export
WHAT_IS_STORED = {
    "onnx-int8": ("uint8", {"MatMulNBits"}),
    "onnx-int8-dynamic": ("int8", {"DynamicQuantizeLinear", "MatMulInteger"}),
    "openvino-int8": ("u8", set()),
    "openvino-int8-static": ("i8", set()),
    "onnx-float16": ("float16", set()),
}


@pytest.mark.parametrize("name", list(WHAT_IS_STORED))
def test_reduced_precision_exports(name, exports, torch_pipe):
    """8-bit weights and float16 storage: the weights' element type, the operators that use
    them, and a noise prediction near PyTorch's float32 one but not equal to it (the float32
    exports match exactly, above)."""
    directory, (fmt, dtype, weights) = exports[name], EXPORTS[name]
    doc = read_manifest(directory).document
    assert (doc["export"]["dtype"], doc["export"]["weights"]) == (dtype, weights)
    stored, operators = WHAT_IS_STORED[name]
    assert stored in _constant_types(directory)
    if fmt == "onnx":
        assert operators <= _operators(directory / "denoiser.onnx")
    elif weights == "int8":  # NNCF also compresses the convolutions: most of this model's weights
        assert (directory / "denoiser.bin").stat().st_size < 0.5 * (
            exports["openvino"] / "denoiser.bin"
        ).stat().st_size
    pipe = ExportedInpaintPipeline.from_exported(directory, threads=1)
    torch.manual_seed(0)
    sample = torch.randn(2, 9, 8, 12) * 2
    with torch.inference_mode():
        expected = torch_pipe.model(
            sample, torch.tensor([500]), _ids(("background", "foreground"))
        ).sample
    feeds = {"sample": sample.numpy(), "timestep": np.array([500]), "category": np.array([0, 1])}
    (got,) = pipe.engine.run("denoiser", feeds)
    error = np.abs(got - expected.numpy()).max() / np.abs(expected.numpy()).max()
    assert 0 < error <= 0.01


def test_static_int8_quantises_the_weight_products_only(exports):
    """``int8-static``: activations enter the products with stored weights through calibrated
    8-bit quantisers; convolutions and the λ products of two activations, where 8 bits cost
    the most accuracy, stay float; the manifest's byte counts are the quantised graph's (it
    loads, above)."""
    import openvino as ov

    model = ov.Core().read_model(str(exports["openvino-int8-static"] / "denoiser.xml"))

    def quantised(op) -> bool:
        return any(
            op.input_value(i).get_node().get_type_name() == "FakeQuantize"
            for i in range(op.get_input_size())
        )

    by_type: dict[str, list] = {}
    for op in model.get_ops():
        by_type.setdefault(op.get_type_name(), []).append(op)

    def weight_operand(op) -> bool:
        operand = op.input_value(1).get_node()
        while operand.get_type_name() in ("Convert", "Multiply", "Subtract", "Transpose"):
            operand = operand.input_value(0).get_node()
        return operand.get_type_name() == "Constant"

    quantised_products = [op for op in by_type["MatMul"] if quantised(op)]
    assert quantised_products and all(weight_operand(op) for op in quantised_products)
    assert any(not weight_operand(op) for op in by_type["MatMul"])  # λ's, left float
    convolutions = by_type["Convolution"] + by_type.get("GroupConvolution", [])
    assert convolutions and not any(quantised(op) for op in convolutions)


def test_denoiser_looks_timestep_features_up(onnx_dir, torch_pipe):
    """The graph computes no angle t·f: a runtime in bfloat16 (OpenVINO's ``bf16`` hint) would
    round it to 8 significant bits. The features of every training timestep are one constant,
    equal to the ones PyTorch computes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_dir / "denoiser.onnx"))
    assert not {"Sin", "Cos"} & {node.op_type for node in model.graph.node}
    timesteps = torch_pipe.schedule.num_train_timesteps
    features = timestep_sinusoids(
        torch.arange(timesteps), torch_pipe.model.diff_model.time_embedding.in_channels
    ).numpy()
    tables = [
        numpy_helper.to_array(i) for i in model.graph.initializer if tuple(i.dims) == features.shape
    ]
    assert len(tables) == 1 and np.array_equal(tables[0], features)


def test_openvino_releases_compiled_shapes(openvino_dir):
    pipe = ExportedInpaintPipeline.from_exported(openvino_dir, threads=1)
    sample = np.random.default_rng(0).standard_normal((2, 9, 4, 4), dtype=np.float32)
    feeds = {"sample": sample, "timestep": np.array([10]), "category": np.array([0, 1])}
    (first,) = pipe.engine.run("denoiser", feeds)
    assert pipe.engine.compiled["denoiser"]
    pipe.engine.release()
    assert not any(pipe.engine.compiled.values())
    (again,) = pipe.engine.run("denoiser", feeds)
    np.testing.assert_array_equal(first, again)


def test_feature_table_is_not_saved_with_the_weights():
    model = tiny_model()
    keys = set(model.state_dict())
    model.diff_model.time_embedding.tabulate(1000)
    assert set(model.state_dict()) == keys


# latent sides: wider than trained (tables interpolated), smaller (antialiased); the trained size
# is checked by every export itself
@pytest.mark.parametrize("size", [(12, 8), (4, 4)])
def test_step_matches_pytorch(exported, torch_pipe, size):
    torch.manual_seed(0)
    sample = torch.randn(3, 9, *size) * 2
    categories = ("background", "foreground", "background")
    with torch.inference_mode():
        expected = torch_pipe.model(sample, torch.tensor([700]), _ids(categories)).sample
    feeds = {"sample": sample.numpy(), "timestep": np.array([700]), "category": np.array([0, 1, 0])}
    (got,) = exported.engine.run("denoiser", feeds)
    assert np.abs(got - expected.numpy()).max() <= 1e-4


def test_vae_matches_pytorch(exported, torch_pipe):
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.inference_mode():
        posterior = torch_pipe.vae.encode(pixels).latent_dist
        decoded = torch_pipe.vae.decode(posterior.mean).sample
    mean, std = exported.engine.run("vae_encoder", {"pixels": pixels.numpy()})
    (pixels_out,) = exported.engine.run("vae_decoder", {"latents": posterior.mean.numpy()})
    assert np.abs(mean - posterior.mean.numpy()).max() <= 1e-4
    assert np.abs(std - posterior.std.numpy()).max() <= 1e-4
    assert np.abs(pixels_out - decoded.numpy()).max() <= 1e-4


class TorchNoise:
    """NumPy's ``standard_normal`` over a seeded ``torch.Generator``: the exported pipeline then
    draws the very noise the PyTorch pipeline draws with that seed."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def standard_normal(self, size, dtype=np.float32) -> np.ndarray:
        return torch.randn(size, generator=self.generator).numpy().astype(dtype)


# at strength 1 neither backend encodes the photo itself; both drop its draws in the same order
@pytest.mark.parametrize("size, strength", [((64, 64), 0.9), ((120, 80), 0.9), ((64, 64), 1.0)])
def test_inpainting_matches_pytorch_given_the_same_noise(exported, torch_pipe, size, strength):
    image = Image.fromarray(data.astronaut()).resize(size)
    hole = np.zeros(size[::-1], np.uint8)
    hole[10:40, 20:50] = 255
    mask = Image.fromarray(hole)
    settings = InpaintSettings(steps=4, seed=3, noise_offset=0.1, strength=strength)
    images, masks = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], [mask, mask]
    expected = torch_pipe(images, masks, settings=settings, output_type="np").images
    got = exported(
        images, masks, settings=settings, output_type="np", generator=[TorchNoise(3), TorchNoise(3)]
    ).images
    for a, b in zip(got, expected, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 2


def test_an_export_conditions_on_the_masked_image_fill_its_model_was_trained_with(
    onnx_dir, torch_pipe, tmp_path
):
    """The manifest carries ``masked_image_fill`` and the runtime conditions on it as the
    PyTorch pipeline does; an unknown value is a one-line error."""
    assert read_manifest(onnx_dir).masked_image_fill == "none"
    telea_dir = tmp_path / "telea"
    shutil.copytree(onnx_dir, telea_dir)
    manifest = json.loads((telea_dir / MANIFEST_FILE).read_text())
    manifest["masked_image_fill"] = "telea"
    (telea_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    exported = ExportedInpaintPipeline.from_exported(telea_dir, threads=1)
    exported.set_progress_bar_config(disable=True)
    assert exported.masked_image_fill is Prefill.TELEA
    reference = MoebiusInpaintPipeline(torch_pipe.model, torch_pipe.vae, masked_image_fill="telea")
    reference.set_progress_bar_config(disable=True)

    image = Image.fromarray(data.astronaut()).resize((64, 64))
    hole = np.zeros((64, 64), np.uint8)
    hole[10:40, 20:50] = 255
    settings = InpaintSettings(steps=3, seed=3, strength=1.0)
    expected = reference(image, Image.fromarray(hole), settings=settings, output_type="np")
    got = exported(image, Image.fromarray(hole), settings=settings, output_type="np",
                   generator=TorchNoise(3))  # fmt: skip
    assert np.abs(got.images[0].astype(int) - expected.images[0]).max() <= 2
    # (the tiny random model hardly reacts to its condition: compare what it is given)
    region = prepare(image, Image.fromarray(hole), settings, 64, exported.pixel_multiple)
    pixels, holes = region.model_inputs()
    conditioned = exported._masked_images([region], pixels, holes, Prefill.NONE)
    np.testing.assert_array_equal(conditioned, region.model_inputs(Prefill.TELEA)[0])

    manifest["masked_image_fill"] = "blur"
    (telea_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest settings") as error:
        ExportedInpaintPipeline.from_exported(telea_dir, threads=1)
    assert "\n" not in str(error.value)


def test_seeds_are_numpy_streams(exported):
    image = Image.fromarray(data.astronaut()).resize((64, 64))
    hole = np.zeros((64, 64), np.uint8)
    hole[10:40, 20:50] = 255
    mask = Image.fromarray(hole)
    settings = InpaintSettings(steps=2, seed=5)
    a = exported(image, mask, settings=settings, output_type="np").images[0]
    b = exported(image, mask, settings=settings, output_type="np", generator=5).images[0]
    c = exported(image, mask, settings=settings, output_type="np", generator=6).images[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(InputError, match="NumPy"):
        exported(image, mask, settings=settings, generator=torch.Generator())


NO_TORCH = """
import sys
sys.modules["torch"] = None  # from here on, any import of torch fails
from PIL import Image
import moebius, moebius.pipeline
from moebius.cli import main
from moebius.compositing import prepare
from moebius.pipeline import MoebiusInpaintPipeline

photo, mask = Image.open("{tmp}/photo.png"), Image.open("{tmp}/mask.png")
for directory in ("{onnx}", "{openvino}"):
    pipe = MoebiusInpaintPipeline.from_exported(directory, threads=1)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(photo, mask, num_inference_steps=2).images[0].size == (96, 64)
argv = ["inpaint", "{tmp}/photo.png", "{tmp}/mask.png", "-o", "{tmp}/out.png",
        "--backend", "onnxruntime", "--model", "{onnx}", "--steps", "2", "-q", "--threads", "1"]
assert main(argv) == 0
print(sys.modules["torch"] is None)
"""


def test_runtime_runs_without_pytorch(onnx_dir, openvino_dir, tmp_path):
    """PyTorch cannot be imported: the package, the pipeline core, the exported runtime and the
    inpaint command must not need it."""
    image = Image.fromarray(data.astronaut()).resize((96, 64))
    image.save(tmp_path / "photo.png")
    mask = np.zeros((64, 96), np.uint8)
    mask[10:40, 20:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH.format(onnx=str(onnx_dir), openvino=str(openvino_dir), tmp=tmp_path))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "MOEBIUS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "True"
    assert (tmp_path / "out.png").is_file()


# ------------------------------------------------------------------ bad directories
def _copy(directory: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(directory, target)
    return target


def test_bad_export_directories(onnx_dir, openvino_dir, tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="no manifest.json"):
        read_manifest(tiny_dir)
    with pytest.raises(CheckpointError, match="not a directory"):
        read_manifest(tmp_path / "missing")
    truncated = _copy(onnx_dir, tmp_path / "a")
    with (truncated / "denoiser.onnx").open("r+b") as file:
        file.truncate(1000)
    with pytest.raises(CheckpointError, match="does not match its manifest.json"):
        ExportedInpaintPipeline.from_exported(truncated)
    # a graph swapped for another one, its size recorded: the graphs are checked on load
    swapped = _copy(onnx_dir, tmp_path / "b")
    shutil.copyfile(swapped / "vae_decoder.onnx", swapped / "denoiser.onnx")
    manifest = json.loads((swapped / MANIFEST_FILE).read_text())
    manifest["graphs"]["denoiser"]["bytes"][".onnx"] = (swapped / "denoiser.onnx").stat().st_size
    (swapped / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="denoiser takes"):
        ExportedInpaintPipeline.from_exported(swapped)
    with pytest.raises(InputError, match="OpenVINO export"):
        ExportedInpaintPipeline.from_exported(openvino_dir, "onnxruntime")
    with pytest.raises(InputError, match="float32"):
        ExportedInpaintPipeline.from_exported(onnx_dir, "onnxruntime", dtype="bfloat16")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--backend", "onnxruntime", "--model", "{tiny}"], "not one (make it with"),
        (["--backend", "onnxruntime", "--model", "{openvino}"], "holds an OpenVINO export"),
        (["--backend", "openvino", "--model", "{onnx}", "--device", "cuda"], "runs on the CPU"),
    ],
)
def test_cli_bad_backend_model_is_one_line(
    argv, message, onnx_dir, openvino_dir, tiny_dir, tmp_path, capsys
):
    names = {"tiny": tiny_dir, "onnx": onnx_dir, "openvino": openvino_dir}
    image = Image.fromarray(data.astronaut()).resize((64, 64))
    image.save(tmp_path / "in.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "mask.png")
    argv = [a.format(**names) for a in argv]
    rc = main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "-o",
               str(tmp_path / "out.png"), "-q", *argv])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out.png").exists()


def test_export_refuses_existing_directory_and_teacher(onnx_dir, tmp_path, capsys):
    assert main(["export", "onnx", str(onnx_dir), "--model", "moebius-demo", "-q"]) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(InputError, match="--weights"):
        ExportOptions("openvino", weights="int8-dynamic").validate()
    with pytest.raises(InputError, match="--weights"):
        ExportOptions("onnx", weights="int8-static").validate()


# ------------------------------------------------------------------ the CLI on the demo model
def test_cli_exports_and_inpaints_the_demo_model_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MOEBIUS_OFFLINE", "1")
    out = tmp_path / "demo-onnx"
    assert (
        main(["export", "onnx", str(out), "--model", "moebius-demo", "--threads", "1", "-q"]) == 0
    )
    assert read_manifest(out).format == "onnx"
    assert read_manifest(out).settings["prefill"] == "telea"  # the demo's own defaults travel
    assert read_manifest(out).masked_image_fill == "telea"  # and what it was trained to see
    image = Image.fromarray(data.coffee()).resize((200, 150))
    image.save(tmp_path / "in.jpg")
    mask = np.zeros((150, 200), np.uint8)
    mask[50:100, 60:140] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    results = {}
    for backend in ("onnxruntime", "openvino"):
        target = tmp_path / f"{backend}.png"
        argv = ["inpaint", str(tmp_path / "in.jpg"), str(tmp_path / "mask.png"), "-o",
                str(target), "--backend", backend, "--model", str(out), "--steps", "8",
                "--threads", "1", "-q"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        results[backend] = np.asarray(Image.open(target)).astype(int)
        assert results[backend].shape == (150, 200, 3)
        assert not np.array_equal(results[backend], np.asarray(image))
    # the same graphs and seed on both runtimes
    assert np.abs(results["onnxruntime"] - results["openvino"]).max() <= 2


# ------------------------------------------------------------------ the service
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_serve_runs_an_export(backend, onnx_dir, openvino_dir, tmp_path):
    """``moebius serve --backend`` as a real process: the service answers with the image the
    exported pipeline makes for the same settings (seeds are NumPy streams on both)."""
    directory = onnx_dir if backend == "onnxruntime" else openvino_dir
    image = Image.fromarray(data.astronaut()).resize((96, 64))
    hole = np.zeros((64, 96), np.uint8)
    hole[10:40, 20:60] = 255
    mask = Image.fromarray(hole)
    form = {"image": ("p.png", png(image)), "mask": ("m.png", png(mask))}
    with serve(tmp_path, "--backend", backend, "--model", str(directory)) as server:
        answer = httpx.post(
            f"{server.url}/v1/inpaint", files=form, data={"steps": "2", "seed": "7"}, timeout=120
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model"] == str(directory)
    served = np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB")).astype(int)
    pipe = ExportedInpaintPipeline.from_exported(directory, backend, threads=1)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(image, mask, settings=InpaintSettings(steps=2, seed=7), output_type="np")
    assert np.abs(served - expected.images[0]).max() <= 1
    assert not np.array_equal(served, np.asarray(image))


def test_serve_refuses_a_mismatched_export_in_one_line(openvino_dir):
    argv = ["serve", "--port", "0", "--threads", "1", "--backend", "onnxruntime",
            "--model", str(openvino_dir)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "moebius.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "holds an OpenVINO export" in last and "Traceback" not in done.stderr


def test_set_export_switches_every_export_form():
    model = tiny_model()
    set_export(model, True)
    kinds = (LocalLambda, InteractiveLambda, MixFFN, Upsample, TimestepEmbedding)
    flags = {type(m): m.export for m in model.modules() if isinstance(m, kinds)}
    assert set(flags) == set(kinds) and all(flags.values())
    set_export(model, False)
    assert not any(m.export for m in model.modules() if hasattr(m, "export"))


def test_quality_report_command(tmp_path, capsys):
    from moebius.export.quality import main as quality
    from moebius.sampling import NoiseSchedule

    # a v-prediction model, as the bundled demo is: every candidate must sample with its schedule
    model_dir = tmp_path / "v-model"
    schedule = NoiseSchedule(prediction_type="v_prediction")
    MoebiusInpaintPipeline(tiny_model(), tiny_vae(), schedule).save_pretrained(model_dir)
    out = tmp_path / "quality"
    argv = ["--model", str(model_dir), "--out", str(out), "--steps", "2", "--threads", "1"]
    assert quality([*argv, "--backends", "onnxruntime", "--weights", "float"]) == 0
    report = json.loads((out / "quality.json").read_text())
    rows = {row["label"]: row for row in report["rows"]}
    assert set(rows) == {"reference", "torch bfloat16", "onnxruntime float32"}
    assert rows["onnxruntime float32"]["psnr_db"] > 40  # float32 graphs: rounding only
    assert rows["onnxruntime float32"]["latent_mean_abs"] < 1e-3
    assert rows["torch bfloat16"]["latent_mean_abs"] < 0.05 * report["latent_ref_mean_abs"]
    assert report["size"] == [64, 64] and report["source"]["sha256"]
    assert "| onnxruntime float32 |" in (out / "quality.md").read_text()
