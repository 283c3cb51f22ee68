"""onnxruntime back-end (CPU; the CUDA and TensorRT execution providers when installed).

The session runs the file exactly as it is on disk, as any app's `InferenceSession` would:
the graph rewrites that make GLNet fast here are made at export time (`export.passes`,
`glnet-export onnx --target onnxruntime`), so what this runner measures is what users get.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artifacts.backends import BackendUnavailableError, import_onnxruntime
from artifacts.metadata import ArtifactMetadata, MetadataError

from .base import Runner, RuntimeInputError, TensorSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# onnxruntime's WeightBiasQuantization turns a float Conv/Gemm bias behind DequantizeLinear
# inputs into int32, dividing it by input scale x weight scale computed in the scales' own
# type: with the fp16 scales of the TensorRT Q/DQ file (`export.precision`) that product
# underflows and the quotient overflows fp16, and the logits come out wrong (cosine 0.3 to
# PyTorch on glnet_tiny; right with it off, and with every optimization off). The only files
# here with float biases behind Q/DQ are those TensorRT files (onnxruntime-int8 quantizes its
# biases), so turning it off changes nothing else, and those files run as written.
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def session_options(threads: int | None = None):  # type: ignore[no-untyped-def]
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def _metadata(session) -> ArtifactMetadata | None:  # type: ignore[no-untyped-def]
    try:
        return ArtifactMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    except MetadataError:
        return None


def _refuse_for_tensorrt(path: str | Path, ort) -> None:  # type: ignore[no-untyped-def]
    """TensorRT's execution provider cannot take contrib ops: it would quietly run them on
    CUDA or the CPU, and the numbers would not be TensorRT's. Read before the TensorRT
    session is made (that builds engines): an unoptimized CPU session only reads the file."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    meta = _metadata(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
    if meta is not None and meta.runtime_only == "onnxruntime":
        raise RuntimeInputError(f"{path}: an onnxruntime-targeted file (contrib ops "
                                f"{', '.join(meta.contrib_ops) or 'none'}) cannot run on TensorRT; "
                                "use the portable ONNX it came from")


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    thread_safe = True  # InferenceSession.run is documented thread-safe

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        ort = import_onnxruntime()
        if device not in PROVIDERS:
            raise BackendUnavailableError(f"onnxruntime device must be one of {', '.join(PROVIDERS)}, not {device!r}")
        wanted = PROVIDERS[device]
        available = set(ort.get_available_providers())
        if wanted[0] not in available:
            raise BackendUnavailableError(
                f"onnxruntime here has no {wanted[0]} (available: {', '.join(sorted(available))})"
            )
        if device == "tensorrt":
            _refuse_for_tensorrt(path, ort)
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=wanted,
                                            disabled_optimizers=DISABLED_OPTIMIZERS)
        self.device = device
        self.inputs = [TensorSpec(i.name, tuple(i.shape), i.type) for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), o.type) for o in self.session.get_outputs()]
        self.metadata = _metadata(self.session)
        if self.metadata is not None:
            self.precision = self.metadata.precision
        self._input_name = self.inputs[0].name
        self._output_names = [o.name for o in self.outputs]

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: x})[0]

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, {self._input_name: x}), strict=True))

    def _close(self) -> None:
        del self.session
