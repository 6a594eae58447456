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

Interactive-λ's position tables are learned too, but they are resampled in the graph by
products with size-dependent matrices, and those products stay float32.
"""

import contextlib
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


def _openvino(source: Path, target: Path, dtype: str, weights: str) -> None:
    import openvino as ov

    model = ov.convert_model(str(source))
    if weights == "int8":
        import nncf

        keep = nncf.IgnoredScope(names=float_products(source), validate=False)
        model = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=keep
        )
    ov.save_model(model, str(target), compress_to_fp16=dtype == "float16")
