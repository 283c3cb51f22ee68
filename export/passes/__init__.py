"""Graph passes: rewrites that make an exported file faster on one runtime, applied at export.

Every rewrite lives here, one module each, and is applied when a file is written, never
when it is loaded: what an app gets from a bare `onnxruntime.InferenceSession` or
`openvino.Core.compile_model` on the shipped file is what `glnet-export bench` measures.

This module is the one place that says which passes each target gets:

- `portable` (the default ONNX, for TensorRT, OpenVINO and any ONNX runtime): none. The
  file is standard ONNX in the deploy form's layout.
- `onnxruntime`: attention fused into the contrib `com.microsoft.Attention` kernel, the
  channel LayerNorms fused into LayerNormalization, the residual depthwise convolutions
  folded into their kernels (onnxruntime's CPU provider computes in fp32), GLMix's residual
  sum regrouped so two convolution outputs meet inside a convolution. The result runs
  only on onnxruntime (a contrib op), so its metadata says so.
- OpenVINO IRs built for f32 compute (`openvino --compute f32`): the residual fold, on the
  OpenVINO model (`openvino_fold`). IRs for the device's own choice keep the Adds: in bf16
  the folded identity rounds in a weight (see `residual_fold`).
- TensorRT's fp16 / Q/DQ ONNX: the LayerNorm fusion (`export.precision`), for TensorRT's
  fp32-accumulating normalization kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from .attention import fuse_attention
from .conv_sums import regroup_conv_sums
from .layer_norm import fuse_channel_layer_norms
from .residual_fold import fold_residual_depthwise

# onnxruntime release the targeted files need: the project's own floor, which is what the
# tests run; the contrib Attention kernel with a fused q|k|v weight is older than that.
ONNXRUNTIME_REQUIRES = "onnxruntime>=1.20"


@dataclass(frozen=True)
class Pass:
    name: str  # how metadata and summaries name it
    apply: Callable[[onnx.ModelProto], int]  # rewrites in place, returns how many sites changed


# Order matters: the attention fusion matches the exporter's MatMul/Softmax chain before the
# LayerNorm fusion renames anything; the conv-sum regrouping needs the residual fold's
# Conv outputs (a folded pos_conv is a Conv that feeds the sum directly).
ONNX_PASSES: dict[str, tuple[Pass, ...]] = {
    "portable": (),
    "onnxruntime": (
        Pass("attention", fuse_attention),
        Pass("residual_fold", fold_residual_depthwise),
        Pass("layer_norm", fuse_channel_layer_norms),
        Pass("conv_sums", regroup_conv_sums),
    ),
}
TARGETS = tuple(ONNX_PASSES)


@dataclass
class PassReport:
    """What the passes of one target changed, pass by pass, in the order they ran."""

    target: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        if not self.counts:
            return "none"
        return ", ".join(f"{name} {count}" for name, count in self.counts.items())


def contrib_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """The non-standard ops the graph uses, as "domain.OpType" (sorted, no duplicates)."""
    return tuple(sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")}))


def apply_onnx_target(model: onnx.ModelProto, target: str) -> PassReport:
    """Run `target`'s passes on `model` in place."""
    if target not in ONNX_PASSES:
        raise ValueError(f"unknown ONNX target {target!r} (known: {', '.join(ONNX_PASSES)})")
    start = time.perf_counter()
    report = PassReport(target)
    for p in ONNX_PASSES[target]:
        report.counts[p.name] = p.apply(model)
    report.seconds = time.perf_counter() - start
    return report
