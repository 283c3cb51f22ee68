"""PyTorch GLNet -> one self-contained ONNX file, correct at every shape it claims.

The traps this module exists for (FIELD_NOTES): the legacy exporter refuses GLMix, so
the dynamo exporter is used on the deploy form; a batch-1 example freezes a "dynamic"
batch, so the example batch is always >= 2 when the batch is dynamic; the reference
form's adaptive pooling is baked to the traced size, so the deploy form computes it from
the input's size. Verification at other shapes (`verification.artifact`) proves the result.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

import artifacts
from artifacts.atomic import check_writable
from artifacts.errors import ExportError, OptionError, one_line
from artifacts.metadata import IMAGENET_LABELS, MIN_SIDE, ArtifactMetadata
from artifacts.onnx_blocks import scope_blocks, tag_blocks
from artifacts.onnx_file import save_onnx, set_metadata
from glnet.features import GLNetFeatures, UnknownSlotBlockError, output_names, resolve_slot_blocks
from glnet.model import GLNet

from .onnxruntime import target_proto
from .passes import TARGETS, PassReport

DYNAMIC_MODES = ("none", "batch", "shape")
Progress = Callable[[str], None]


@dataclass
class OnnxExportOptions:
    opset: int = 20  # native Gelu and LayerNormalization; TensorRT 10.3 parses it
    input_size: tuple[int, int] = (224, 224)
    batch: int = 1  # fixed batch for dynamic="none"; the first verified batch otherwise
    dynamic: str = "batch"
    simplify: bool = True
    features: bool = False  # the four stage outputs (glnet.features) instead of the logits
    slot_blocks: tuple[str, ...] = ()  # with features: GLMix blocks whose slot maps are extra outputs
    # "portable" (standard ONNX, any runtime) or "onnxruntime" (export.passes' rewrites,
    # contrib ops: runs only there, at the speed bench reports for it).
    target: str = "portable"

    def validate(self) -> None:
        if self.dynamic not in DYNAMIC_MODES:
            raise OptionError(f"--dynamic must be one of {', '.join(DYNAMIC_MODES)}, not {self.dynamic!r}")
        h, w = self.input_size
        if h < MIN_SIDE or w < MIN_SIDE:
            raise OptionError(f"input size {h}x{w} is too small: GLNet down-samples 32x, use at least 32x32")
        if self.dynamic == "shape" and min(h, w) <= MIN_SIDE:
            raise OptionError(f"with --dynamic shape the export size must be above {MIN_SIDE}x{MIN_SIDE}, not {h}x{w}")
        if self.batch < 1:
            raise OptionError(f"batch must be >= 1, not {self.batch}")
        if not 17 <= self.opset <= 23:
            raise OptionError(f"opset {self.opset} is not supported; use 17 to 23 (20 is the default)")
        if self.target not in TARGETS:
            raise OptionError(f"--target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.slot_blocks and not self.features:
            raise OptionError("slot maps are outputs of a feature export: add --features to --with-slots")


@dataclass
class OnnxExportResult:
    path: Path
    metadata: ArtifactMetadata
    opset: int
    batch: int  # the fixed batch, or the example's batch when the batch is dynamic
    dynamic_axes: dict[str, list[str]]
    nodes_exported: int
    nodes_final: int
    simplified: bool
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    passes: PassReport | None = None  # what export.passes rewrote (target onnxruntime)


def parse_input_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '288x352' -> (288, 352)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise OptionError(f"input size {text!r} is not N or HxW (e.g. 224 or 288x352)") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2:
        raise OptionError(f"input size {text!r} is not N or HxW (e.g. 224 or 288x352)")
    options = OnnxExportOptions(input_size=(sizes[0], sizes[1]))
    options.validate()
    return options.input_size


def _dynamic_shapes(mode: str, outputs: tuple[str, ...] = ("logits",)
                    ) -> tuple[dict[str, dict[int, torch.export.Dim]] | None, dict[str, list[str]]]:
    if mode == "none":
        return None, {}
    dims: dict[int, torch.export.Dim] = {0: torch.export.Dim("batch", min=1, max=4096)}
    names = {"input": ["batch"], **{name: ["batch"] for name in outputs}}
    if mode == "shape":
        # min 33, not 32: at 32 the last map is 1 x 1, which torch.export specialises; a
        # 32 lower bound makes it fail a guard and silently capture the model a second
        # time with the refined range (about 9 s of glnet_4g's export).
        dims[2] = torch.export.Dim("height", min=MIN_SIDE + 1, max=8192)
        dims[3] = torch.export.Dim("width", min=MIN_SIDE + 1, max=8192)
        names["input"] += ["height", "width"]
    return {"x": dims}, names


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints progress and warnings of its own; we report our own progress."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _output_names(model: GLNet, options: OnnxExportOptions) -> tuple[str, ...]:
    if not options.features:
        return ("logits",)
    try:
        return output_names(resolve_slot_blocks(model, options.slot_blocks))
    except UnknownSlotBlockError as exc:
        raise OptionError(str(exc)) from None


def trace_to_onnx(model: GLNet, options: OnnxExportOptions) -> onnx.ModelProto:
    """Run the dynamo exporter on the deploy form of `model` (left unchanged)."""
    deploy = copy.deepcopy(model).eval().to_deploy()
    module: torch.nn.Module = GLNetFeatures(deploy, options.slot_blocks).eval() if options.features else deploy
    dynamic_shapes, _ = _dynamic_shapes(options.dynamic)
    # A dynamic axis whose example size is 1 gets specialised to 1 (FIELD_NOTES trap 2).
    batch = max(2, options.batch) if options.dynamic != "none" else options.batch
    example = torch.randn(batch, 3, *options.input_size)
    try:
        with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            program = torch.onnx.export(
                module, (example,), None, input_names=["input"], output_names=list(_output_names(model, options)),
                opset_version=options.opset, dynamic_shapes=dynamic_shapes, dynamo=True,
                external_data=False, optimize=False, verify=False, report=False,
            )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {one_line(exc)}") from exc
    assert program is not None
    return program.model_proto


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """onnxsim on the graph; on any failure the input graph and the reason."""
    try:
        import onnxsim
    except ImportError:
        return proto, "onnxsim is not installed"
    try:
        with _quiet_exporter():
            simplified, ok = onnxsim.simplify(proto, check_n=0)
    except Exception as exc:  # noqa: BLE001 - a failed simplification must not fail the export
        return proto, f"onnxsim failed: {one_line(exc)}"
    if not ok:
        return proto, "onnxsim reported the simplified graph as invalid"
    return simplified, None


def optimize_graph(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The torch exporter's own optimizer (onnxscript), run after onnxsim rather than in the
    export: on the raw dynamic-shape glnet_4g graph it takes 10 s (a quarter of the export),
    on the graph onnxsim has folded 3 s, with the same 1760 nodes in the end. It turns
    onnxsim's leftover CastLike nodes into Casts, among others."""
    try:
        import onnxscript.optimizer

        with _quiet_exporter():
            return onnxscript.optimizer.optimize(proto), None
    except Exception as exc:  # noqa: BLE001 - an optimizer failure must not fail the export
        return proto, f"the onnxscript optimizer failed: {one_line(exc)}"


def check_graph(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker: {one_line(exc)}") from exc


def build_metadata(model: GLNet, options: OnnxExportOptions, checkpoint_sha256: str | None) -> ArtifactMetadata:
    outputs = _output_names(model, options)
    return ArtifactMetadata(
        model=model.cfg.name,
        num_classes=model.num_classes,
        config=model.cfg.to_dict(),
        input_size=options.input_size,
        labels=IMAGENET_LABELS if model.num_classes == 1000 else "",
        dynamic=options.dynamic,
        random_weights=checkpoint_sha256 is None,
        checkpoint_sha256=checkpoint_sha256 or "",
        opset=options.opset,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        glnet_export_version=artifacts.__version__,
        task="features" if options.features else "classify",
        outputs=outputs,
        output_name=outputs[0],
    )


def export_onnx(
    model: GLNet,
    output: str | Path,
    options: OnnxExportOptions | None = None,
    checkpoint_sha256: str | None = None,
    progress: Progress | None = None,
) -> OnnxExportResult:
    """Export `model` to `output`; the model itself is not modified.

    `checkpoint_sha256` is recorded in the metadata (None means random weights).
    """
    options = options or OnnxExportOptions()
    options.validate()
    output = Path(output)
    check_writable(output)
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    notes: list[str] = []
    outputs = _output_names(model, options)  # an unknown --with-slots block fails here, before tracing

    say(f"exporting {model.cfg.name} with torch.onnx (dynamo), dynamic {options.dynamic}")
    proto = trace_to_onnx(model, options)
    nodes_exported = len(proto.graph.node)
    scopes = scope_blocks(proto)  # onnxsim drops the exporter's scopes: read them now (artifacts.onnx_blocks)
    simplified = False
    if options.simplify:
        say("simplifying with onnxsim")
        proto, reason = simplify(proto)
        simplified = reason is None
        if reason:
            notes.append(f"kept the unsimplified graph: {reason}")
    say("optimizing with onnxscript")
    proto, reason = optimize_graph(proto)
    if reason:
        notes.append(f"kept the unoptimized graph: {reason}")
    if not tag_blocks(proto, scopes):
        notes.append("the exporter recorded no module scopes: the file has no block map (debug-precision, "
                     "--keep-float)")
    say("checking the graph (onnx.checker)")
    check_graph(proto)
    meta = build_metadata(model, options, checkpoint_sha256)
    set_metadata(proto, meta)
    passes = None
    if options.target != "portable":
        say(f"rewriting the graph for {options.target}")
        meta, passes = target_proto(proto, meta)
    proto.doc_string = f"GLNet {meta.model} exported by glnet-export {artifacts.__version__}"
    say(f"writing {output}")
    save_onnx(proto, output)
    _, dynamic_axes = _dynamic_shapes(options.dynamic, outputs)
    return OnnxExportResult(
        path=output, metadata=meta, opset=options.opset, batch=options.batch, dynamic_axes=dynamic_axes,
        nodes_exported=nodes_exported, nodes_final=len(proto.graph.node), simplified=simplified,
        size_bytes=output.stat().st_size, seconds=time.perf_counter() - start, notes=notes, passes=passes,
    )
