"""onnxruntime back-end (CPU; the CUDA and TensorRT execution providers when installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glnet_export.metadata import ArtifactMetadata, MetadataError

from .base import BackendUnavailableError, Runner, TensorSpec

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _ort():  # type: ignore[no-untyped-def]
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def session_options(threads: int | None = None):  # type: ignore[no-untyped-def]
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def session_source(path: str | Path, device: str = "cpu", fuse_attention: bool = True) -> tuple[str | bytes, int]:
    """What to hand `InferenceSession` for `path`, and how many attentions were fused.

    The fusion happens in memory only: the contrib op exists in onnxruntime alone (see
    `ort_fusion`), so the file on disk stays standard ONNX for TensorRT and OpenVINO.
    """
    if not fuse_attention or device not in ("cpu", "cuda"):
        return str(path), 0
    import onnx

    from .ort_fusion import fuse_attention as fuse

    model = onnx.load(str(path))
    fused = fuse(model)
    return (model.SerializeToString(), fused) if fused else (str(path), 0)


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    thread_safe = True  # InferenceSession.run is documented thread-safe

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 fuse_attention: bool = True) -> None:
        super().__init__()
        ort = _ort()
        if device not in PROVIDERS:
            raise BackendUnavailableError(f"onnxruntime device must be one of {', '.join(PROVIDERS)}, not {device!r}")
        wanted = PROVIDERS[device]
        available = set(ort.get_available_providers())
        if wanted[0] not in available:
            raise BackendUnavailableError(
                f"onnxruntime here has no {wanted[0]} (available: {', '.join(sorted(available))})"
            )
        source, self.fused_attention = session_source(path, device, fuse_attention)
        self.session = ort.InferenceSession(source, session_options(threads), providers=wanted)
        self.device = device
        self.inputs = [TensorSpec(i.name, tuple(i.shape), i.type) for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, tuple(o.shape), o.type) for o in self.session.get_outputs()]
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata = ArtifactMetadata.from_props(props)
            self.precision = self.metadata.precision
        except MetadataError:
            self.metadata = None
        self._input_name = self.inputs[0].name
        self._output_names = [o.name for o in self.outputs]

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input_name: x})[0]

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self.session.run(self._output_names, {self._input_name: x}), strict=True))

    def _close(self) -> None:
        del self.session
