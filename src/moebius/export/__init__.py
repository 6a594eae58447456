"""Edge deployment: the pipeline's networks as ONNX / OpenVINO graphs, and the pipeline run on
them by ONNX Runtime or OpenVINO with NumPy, without PyTorch.

* ``moebius export onnx|openvino`` (:mod:`moebius.export.exporter`, needs PyTorch) writes an
  export directory: three graphs and a ``manifest.json`` (:mod:`moebius.export.manifest`);
* :class:`~moebius.export.runtime.ExportedInpaintPipeline` (also reached as
  ``MoebiusInpaintPipeline.from_exported``) runs one; :func:`moebius.loading.load_pipeline`
  loads a pipeline for any backend (``torch``, ``onnxruntime``, ``openvino``) for the commands.

Importing this package imports neither PyTorch nor a runtime.
"""
