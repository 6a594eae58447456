"""From the traced float32 ONNX graphs to what an export holds: ONNX or OpenVINO IR, float32
or float16 storage, float or 8-bit weights.

8-bit schemes (``--weights``):

* ``int8``, weight-only: every matrix product's constant weights stored as 8-bit integers with
  a float scale per block of 32 input rows (ONNX Runtime ``MatMulNBits``, symmetric) or per
  output channel (OpenVINO NNCF ``compress_weights``, asymmetric, which also covers
  convolutions); activations and the arithmetic stay float. A quarter of the weights' memory,
  for runtimes bound by weight traffic.
* ``int8-dynamic`` (ONNX Runtime): matrix products in 8-bit integer arithmetic, the weights
  quantised per output channel ahead of time and the activations per tensor at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``); convolutions stay float.
* ``int8-static`` (OpenVINO): the matrix products with a stored weight in 8-bit integer
  arithmetic (VNNI / AMX where the CPU has them), the weights quantised per output channel
  and the activations per tensor with scales fixed at export, from the statistics of the
  exported float32 graph's own 20-step inpainting of a synthetic photo (NNCF ``quantize``
  with SmoothQuant). The rest stays float: 8-bit activations in the 1×1 convolutions, the λ
  layers' products of two activations or all convolutions too cost the full-size student's
  inpainting its 40 dB to float32's (:data:`INT8_SCOPES`; the table in docs/edge.md).

Interactive-λ's position tables are learned too, but they are resampled in the graph by
products with size-dependent matrices, and those products stay float32.
"""

import contextlib
import io
import logging
import shutil
from pathlib import Path

from moebius.export.manifest import GRAPHS

# MatMulNBits: rows of the weight sharing one scale, and its accuracy level 4 (int8 compute
# of the activations against the int8 weights where the CPU has a kernel for it).
INT8_BLOCK = 32


def derive(traced: Path, out: Path, fmt: str, dtype: str, weights: str) -> dict[str, Path]:
    """Write the three graphs into ``out`` from the float32 ONNX files in ``traced``; returns
    graph → main file."""
    files = {}
    for graph in GRAPHS:
        source = traced / f"{graph}.simplified.onnx"
        if not source.exists():  # once for all the targets of one trace
            simplify(traced / f"{graph}.onnx", source)
        if fmt == "onnx":
            files[graph] = out / f"{graph}.onnx"
            _onnx(source, files[graph], dtype, weights)
        else:
            files[graph] = out / f"{graph}.xml"
            _openvino(source, files[graph], dtype, weights)
    return files


def simplify(source: Path, target: Path) -> None:
    """ONNX Runtime's basic graph optimisations, saved: constant folding, dead and duplicate
    node removal and exact fusions in standard ONNX operators, so the result suits any runtime.
    The traced graph's size arithmetic (dynamic shapes) halves in node count, which halves
    the time every later load takes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def float_products(source: Path) -> list[str]:
    """Names of the matrix products with a constant operand that are not layers' weight
    products: the position-table resampling (its left operand is the bicubic weight matrix,
    picked by a ``Where``; compressed, it also breaks OpenVINO's static-shape compilation) and
    anything whose constant is not a 2-D matrix."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    producers = {output: node for node in model.graph.node for output in node.output}
    constants = {init.name: init for init in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in constants:
            continue
        left = producers.get(node.input[0])
        resampling = left is not None and left.op_type == "Where"
        if resampling or len(constants[node.input[1]].dims) != 2:
            keep.append(node.name)
    return keep


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantisers log every node at INFO on the root logger (and advise
    pre-processing at WARNING), and one of them calls ``logging.basicConfig`` when imported: the
    root logger is put back as it was."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs every ignored node at INFO and draws its progress bars and tables on stdout;
    the export reports each step itself."""
    log = logging.getLogger("nncf")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(level)


def _onnx(source: Path, target: Path, dtype: str, weights: str) -> None:
    if dtype == "float32" and weights == "float":
        shutil.copyfile(source, target)
        return
    with _quiet_root_logger():
        _convert_onnx(source, target, dtype, weights)


def _convert_onnx(source: Path, target: Path, dtype: str, weights: str) -> None:
    import onnx

    model = onnx.load(str(source))
    if dtype == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # inputs and outputs stay float32, so one runtime code path feeds every export
        model = convert_float_to_float16(model, keep_io_types=True)
    elif weights == "int8":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=INT8_BLOCK,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_exclude=float_products(source),
        )
        quantizer.process()
        model = quantizer.model.model
    elif weights == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            model,
            target,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=float_products(source),
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
        return
    onnx.save(model, str(target))


# Which operators ``int8-static`` gives 8-bit activations, the scheme's first, then the ones it
# was chosen against (scripts/int8_scopes.py measures them): the matrix products with a stored
# weight; those and the 1×1 convolutions (the pointwise projections); every matrix product;
# everything NNCF quantises by default (depthwise and spatial convolutions too).
INT8_SCOPES = ("weight-matmuls", "pointwise", "products", "everything")


def quantize_activations(
    reference,
    directory: Path,
    source: Path,
    threads: int | None,
    scope: str = INT8_SCOPES[0],
) -> int:
    """``int8-static``: replace the float32 OpenVINO denoiser in ``directory`` (an export of
    ``reference``, the PyTorch pipeline; ``source``: the ONNX graph it was converted from) by
    one whose operators in ``scope`` (:data:`INT8_SCOPES`) run in 8-bit integers, calibrated on
    its own inpainting at the export's trained size. Returns how many feeds calibrated it."""
    import nncf
    import openvino as ov

    from moebius.export.quality import denoiser_inputs, trajectory_start
    from moebius.export.runtime import ExportedInpaintPipeline
    from moebius.settings import InpaintSettings

    settings = InpaintSettings(seed=0)
    exported = ExportedInpaintPipeline.from_exported(directory, threads=threads)
    start = trajectory_start(reference, (reference.image_size,) * 2, settings)
    feeds = denoiser_inputs(exported, start, settings)
    exported.engine.release()
    model = ov.Core().read_model(str(directory / "denoiser.xml"))
    names, types = float_products(source), []
    if scope in ("weight-matmuls", "pointwise"):
        names += _activation_products(model)
    if scope in ("weight-matmuls", "products"):
        types = ["Convolution", "GroupConvolution"]
    elif scope == "pointwise":
        names += _spatial_convolutions(model)
        types = ["GroupConvolution"]
    keep = nncf.IgnoredScope(names=names, types=types, validate=False)
    with _quiet_nncf():
        model = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            subset_size=len(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=keep,
        )
    # the float graph's weights are memory-mapped from denoiser.bin: write beside it, then rename
    ov.save_model(model, str(directory / "denoiser.int8.xml"), compress_to_fp16=False)
    for suffix in (".xml", ".bin"):
        (directory / f"denoiser.int8{suffix}").replace(directory / f"denoiser{suffix}")
    return len(feeds)


def _activation_products(model) -> list[str]:
    """Names of the OpenVINO ``model``'s matrix products whose right operand is computed, not a
    stored weight: the λ layers' contractions of queries, keys and values."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        operand = op.input_value(1).get_node()
        while operand.get_type_name() in ("Convert", "Transpose", "Reshape"):
            operand = operand.input_value(0).get_node()
        if operand.get_type_name() != "Constant":
            names.append(op.get_friendly_name())
    return names


def _spatial_convolutions(model) -> list[str]:
    """Names of the OpenVINO ``model``'s convolutions with kernels larger than 1×1."""
    return [
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() == "Convolution"
        and tuple(op.input_value(1).get_partial_shape().to_shape())[2:] != (1, 1)
    ]


def _openvino(source: Path, target: Path, dtype: str, weights: str) -> None:
    import openvino as ov

    model = ov.convert_model(str(source))
    if weights == "int8":
        import nncf

        keep = nncf.IgnoredScope(names=float_products(source), validate=False)
        with _quiet_nncf():
            model = nncf.compress_weights(
                model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=keep
            )
    ov.save_model(model, str(target), compress_to_fp16=dtype == "float16")
