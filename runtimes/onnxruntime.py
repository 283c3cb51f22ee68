"""onnxruntime back-end (CPU; the CUDA and TensorRT execution providers when installed)."""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class GraphRewrites:
    """What `session_source` changed in the graph a session runs (the file is never changed)."""

    fused_attention: int = 0  # MHA subgraphs -> com.microsoft.Attention (runtimes.ort_fusion)
    folded_residual_convs: int = 0  # h + DWConv(h) -> DWConv' (runtimes.residual_fold)
    fused_layer_norms: int = 0  # spelled-out channel LayerNorms -> LayerNormalization (runtimes.layer_norm)
    regrouped_conv_sums: int = 0  # x + (y + conv) -> (x + conv) + y for a conv x (runtimes.conv_sums)


def session_source(path: str | Path, device: str = "cpu", rewrite: bool = True) -> tuple[str | bytes, GraphRewrites]:
    """What to hand `InferenceSession` for `path`, and what was rewritten in it.

    The rewrites happen in memory only: the contrib Attention op exists in onnxruntime
    alone (see `ort_fusion`), the residual fold is for fp32 execution (see `residual_fold`),
    the channel LayerNorms that the deploy form spells out for OpenVINO run about 4%
    faster here as Transpose -> LayerNormalization -> Transpose (onnxruntime's reductions
    over axis 1 of an NCHW map are slow), and GLMix's residual sum is regrouped so that
    onnxruntime can add two convolution outputs inside a convolution (see `conv_sums`;
    OpenVINO's bf16 loses accuracy with that order). The file on disk stays as exported.
    """
    if not rewrite or device not in ("cpu", "cuda"):
        return str(path), GraphRewrites()
    import onnx

    from .conv_sums import regroup_conv_sums
    from .layer_norm import fuse_channel_layer_norms
    from .ort_fusion import fuse_attention
    from .residual_fold import fold_residual_depthwise

    model = onnx.load(str(path))
    done = GraphRewrites(fuse_attention(model), fold_residual_depthwise(model), fuse_channel_layer_norms(model),
                         regroup_conv_sums(model))
    return (model.SerializeToString(), done) if done != GraphRewrites() else (str(path), done)


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"
    thread_safe = True  # InferenceSession.run is documented thread-safe

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 rewrite: bool = True) -> None:
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
        source, self.rewrites = session_source(path, device, rewrite)
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
