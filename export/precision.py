"""ONNX -> precision-ready ONNX: fp16 mixed precision, or int8 with Q/DQ nodes.

TensorRT 10.12 deprecates weak typing and TensorRT 11 drops the FP16/INT8 builder flags
and the INT8 calibrators, so the precision has to be in the graph itself (FIELD_NOTES
note 11); both files here are ordinary ONNX that onnxruntime runs on a CPU, so the
precision work can be verified without a GPU.

What stays fp32 (and unquantized) is found in the graph, not by name: in every GLMix
block the logits MatMul is the one whose output feeds two Softmax nodes (clustering and
dispatching). It, both softmaxes and the L2 normalisations of its two inputs stay fp32:
the initial slots are pooled from the un-normalised residual stream, whose sum of squares
can pass fp16's 65504, and TensorRT's ONNX parser computes ReduceL2 as a sum of squares
in the tensor's own type. For int8 the clustering and dispatching MatMuls, which take
the slot softmaxes, stay unquantized too, as a precaution: per-tensor int8 leaves few
levels for assignment probabilities of about 1/HW (random weights show no difference).

A strongly typed engine runs every op in the type the ONNX gives it, so the int8 file is
made the way NVIDIA's Model Optimizer makes it (`high_precision_dtype="fp16"`): Conv,
MatMul and Gemm take Q/DQ inputs, no op's output is quantized for its own sake
(`OpTypesToExcludeOutputQuantization`), float consumers of a quantized tensor (residual
Adds, LayerNorms) read the float tensor, and every float op but the fp32 nodes above then
runs in fp16, Q/DQ scales included. `experiments/trt_int8.py` measures it against the file
made before (fp32 everywhere but the int8 ops, every output re-quantized).
Before any of this, the deploy form's spelled-out channel LayerNorms are fused back into
LayerNormalization nodes (`export.passes.layer_norm`), the form TensorRT has a kernel for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from artifacts.atomic import atomic_outputs, check_writable
from artifacts.calibration import SampleBatches
from artifacts.errors import ExportError, OptionError, one_line
from artifacts.metadata import ArtifactMetadata, MetadataError
from artifacts.onnx_blocks import block_nodes, resolve_blocks
from artifacts.onnx_file import read_onnx, set_metadata

from .onnx_int8_nodes import float_inputs_back
from .onnxruntime import refuse_runtime_only
from .passes.layer_norm import fuse_channel_layer_norms

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
INT8_OPS = ("Conv", "MatMul", "Gemm")  # the ops that take int8 inputs (TensorRT's Q/DQ fusions)
# The ops of F.normalize as exported (ReduceL2 -> Clip -> Expand -> Div), of its spelled-out
# forms, of the slot-scale multiply between the normalisation and the logits MatMul, and the
# Transpose that turns the normalised pixel tokens (B x HW x C) into the MatMul's B x C x HW.
_NORMALIZE_OPS = {"ReduceL2", "ReduceSumSquare", "ReduceSum", "Pow", "Sqrt", "Clip", "Max", "Expand", "Div", "Mul",
                  "Reciprocal", "Transpose"}


@dataclass
class PrecisionOptions:
    precision: str = "fp16"
    calibration: Path | Sequence[Path] | None = None  # int8: a folder of images, or image paths
    calib_samples: int = 64  # at most this many calibration images
    calib_method: str = "minmax"
    keep_fp32: Sequence[str] = ()  # more node names to keep fp32 / unquantized
    keep_float: Sequence[str] = ()  # blocks (checkpoint-layout names) to keep fp32 / unquantized: keep_blocks_fp32

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.calib_method not in CALIB_METHODS:
            raise OptionError(f"calibration method must be one of {', '.join(CALIB_METHODS)}")
        if self.precision == "int8" and self.calibration is None:
            raise OptionError("int8 needs calibration images: --calib DIR (a few dozen images like the deployment's)")
        if self.calib_samples < 1:
            raise OptionError(f"calibration samples must be >= 1, not {self.calib_samples}")


@dataclass(frozen=True)
class QdqRecipe:
    """How the int8 Q/DQ file is made. The default is the one for TensorRT; LEGACY_QDQ is
    the file made before, kept for the measurement in experiments/trt_int8.py."""

    output_quantization: bool = False  # quantize every int8 op's output too (onnxruntime's default)
    float_consumers: bool = True  # float ops read a quantized tensor's float value, not its DQ(Q(x))
    fp16_rest: bool = True  # every float op but the fp32 nodes in fp16


LEGACY_QDQ = QdqRecipe(output_quantization=True, float_consumers=False, fp16_rest=False)


@dataclass
class PrecisionResult:
    path: Path
    source: Path
    precision: str
    kept_fp32: list[str]  # nodes left in fp32 (the same rule for fp16 and int8)
    casts: int  # Cast nodes in the result
    quantized: int  # QuantizeLinear nodes in the result
    calibration_images: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    unquantized: list[str] = field(default_factory=list)  # int8: nodes kept out of quantization


def precision_path(source: Path, precision: str) -> Path:
    """model.onnx -> model.fp16.onnx."""
    return source.with_name(f"{source.stem}.{precision}.onnx")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def sensitive_nodes(model: onnx.ModelProto, include_slot_matmuls: bool = False) -> list[str]:
    """Names of the GLMix nodes that must stay fp32: logits MatMul, slot softmaxes, L2 norms.

    With `include_slot_matmuls`, also the MatMuls that take the slot softmaxes (for int8).
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    users = _consumers(graph)
    keep: list[str] = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        softmaxes = [u for u in users.get(node.output[0], []) if u.op_type == "Softmax"]
        if len(softmaxes) < 2:
            continue
        keep += [node.name] + [s.name for s in softmaxes]
        if include_slot_matmuls:  # directly, or through the Transpose of the dispatch weights
            after = [u for s in softmaxes for u in users.get(s.output[0], [])]
            after += [u for t in after if t.op_type == "Transpose" for u in users.get(t.output[0], [])]
            keep += [u.name for u in after if u.op_type == "MatMul"]
        stack = list(node.input)
        while stack:  # walk up both inputs through the normalisation ops
            up = producer.get(stack.pop())
            if up is not None and up.op_type in _NORMALIZE_OPS and up.name not in keep:
                keep.append(up.name)
                stack.extend(up.input)
    return list(dict.fromkeys(keep))


def _drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Remove fp32 -> fp16 -> fp32 Cast pairs between nodes that both stay fp32.

    onnxruntime's converter casts every output of a blocked node to fp16 and back, even
    between two blocked nodes; that would round the sum of squares and the logits through
    fp16, the very thing blocking them is for.
    """
    graph = model.graph
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    drop: set[str] = set()
    gone: set[str] = set()  # the tensors of the dropped casts
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Cast" or node.attribute[0].i != onnx.TensorProto.FLOAT16 or node.output[0] in outputs:
            continue
        after = users.get(node.output[0], [])
        if after and all(a.op_type == "Cast" and a.attribute[0].i == onnx.TensorProto.FLOAT for a in after):
            drop.add(node.name)
            gone.add(node.output[0])
            for a in after:
                drop.add(a.name)
                gone.add(a.output[0])
                rename[a.output[0]] = node.input[0]
    kept = [n for n in graph.node if n.name not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    for out in graph.output:
        if out.name in rename:  # pragma: no cover - graph outputs are never round-tripped
            raise ExportError(f"cannot drop the cast round trip on graph output {out.name}")
    del graph.node[:]
    graph.node.extend(kept)
    stale = [v for v in graph.value_info if v.name in gone]
    for v in stale:
        graph.value_info.remove(v)
    return len(drop)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder the nodes so that each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ExportError(f"the graph has a cycle or a missing input at node {waiting[0].name}")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(model: onnx.ModelProto, keep: Iterable[str]) -> onnx.ModelProto:
    """The model with every float op in fp16 except the nodes in `keep`; fp32 input/output."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = sorted(set(keep))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep, op_block_list=[])
    except Exception as exc:
        raise ExportError(f"fp16 conversion failed: {one_line(exc)}") from exc
    _drop_cast_round_trips(converted)
    _sort_topologically(converted.graph)
    # value_info of initializers is redundant, and the converter may leave it stale (fp16 for an fp32 one)
    graph = converted.graph
    inits = {t.name for t in graph.initializer}
    stale = [v for v in graph.value_info if v.name in inits]
    for v in stale:
        graph.value_info.remove(v)
    try:
        onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    except Exception as exc:
        raise ExportError(f"the fp16 graph's types are inconsistent: {one_line(exc)}") from exc
    return converted


def calibration_samples(source: Path | Sequence[Path], meta: ArtifactMetadata, limit: int) -> list[np.ndarray]:
    """Preprocessed images from a folder (`artifacts.calibration`) or from a list of paths."""
    from artifacts.calibration import load_calibration
    from artifacts.preprocess import preprocess

    if isinstance(source, Path | str):
        return load_calibration(source, meta, count=limit).samples
    if not source:
        raise OptionError("no calibration images given")
    return [preprocess(p, meta) for p in list(source)[:limit]]


def to_int8_qdq(model: onnx.ModelProto, output: Path, samples: Sequence[np.ndarray], exclude: Iterable[str],
                method: str = "minmax", output_quantization: bool = False) -> None:
    """Q/DQ int8 for TensorRT: symmetric, per-channel weights, float biases, Conv/MatMul/Gemm
    inputs (and, with `output_quantization`, their outputs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    if len(samples) < batch:
        raise OptionError(f"the input has a fixed batch of {batch}: give at least {batch} calibration images")
    reader = SampleBatches(samples, model.graph.input[0].name, batch)
    # TensorRT takes symmetric int8 only, and float biases (no int32 DequantizeLinear).
    extra: dict[str, object] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    if not output_quantization:
        # A Q/DQ pair only where an int8 op reads the tensor: a Conv feeding a residual Add
        # alone hands it its float output, not that output rounded to int8 and back.
        extra["OpTypesToExcludeOutputQuantization"] = list(INT8_OPS)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    root = logging.getLogger()  # quantize_static warns on the root logger ("consider pre-processing")
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            model, output, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OPS),
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(set(exclude)), calibrate_method=methods[method], extra_options=extra,
        )
    except (OptionError, ExportError):
        raise
    except Exception as exc:
        raise ExportError(f"int8 quantization failed: {one_line(exc)}") from exc
    finally:
        root.setLevel(level)


def int8_qdq_model(model: onnx.ModelProto, samples: Sequence[np.ndarray], unquantized: Iterable[str],
                   fp32: Iterable[str], method: str = "minmax", recipe: QdqRecipe = QdqRecipe()) -> onnx.ModelProto:
    """The int8 Q/DQ form of `model`: `unquantized` nodes take float inputs, `fp32` nodes
    stay fp32, the rest of the float ops in fp16 (see QdqRecipe)."""
    unquantized = set(unquantized)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # quantize_static moves the weights of the model it is given to external data
    with tempfile.TemporaryDirectory(prefix="glnet-qdq-") as tmp:
        path = Path(tmp) / "quantized.onnx"
        to_int8_qdq(copy, path, samples, unquantized, method, recipe.output_quantization)
        quantized = onnx.load(path)
    if recipe.float_consumers:
        float_inputs_back(quantized, unquantized, INT8_OPS)
    return to_fp16(quantized, fp32) if recipe.fp16_rest else quantized


def _set_metadata(model: onnx.ModelProto, precision: str, notes: list[str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    try:
        meta = ArtifactMetadata.from_props(props)
    except MetadataError:
        notes.append("the source carries no glnet-export metadata: none written")
        return
    meta.precision = precision
    set_metadata(model, meta)


def keep_blocks_fp32(model: onnx.ModelProto, options: PrecisionOptions, source: Path) -> PrecisionOptions:
    """`options` with every node of its `keep_float` blocks (artifacts.onnx_blocks) added to
    `keep_fp32`; the blocks go into the model's metadata (`kept_float`). OptionError with the
    valid names for an unknown block, BlockMapError for a file without a block map."""
    if not options.keep_float:
        return options
    nodes = block_nodes(model, source)
    blocks = resolve_blocks(options.keep_float, list(nodes))
    with contextlib.suppress(MetadataError):
        meta = ArtifactMetadata.from_props({p.key: p.value for p in model.metadata_props})
        set_metadata(model, dataclasses.replace(meta, kept_float=blocks))
    return dataclasses.replace(options, keep_fp32=[*options.keep_fp32, *(n for b in blocks for n in nodes[b])])


def write_precision_onnx(source: str | Path, output: str | Path | None = None,
                         options: PrecisionOptions | None = None) -> PrecisionResult:
    """Write the fp16 or int8 form of the ONNX file `source` (metadata `precision` updated)."""
    options = options or PrecisionOptions()
    options.validate()
    if options.precision == "fp32":
        raise OptionError("fp32 needs no precision ONNX: build from the source file")
    source = Path(source)
    output = Path(output) if output else precision_path(source, options.precision)
    check_writable(output)
    start = time.perf_counter()
    notes: list[str] = []
    model = read_onnx(source)
    props = {p.key: p.value for p in model.metadata_props}
    with contextlib.suppress(MetadataError):
        refuse_runtime_only(ArtifactMetadata.from_props(props), source, "tensorrt")
    fused = fuse_channel_layer_norms(model)
    if fused:
        notes.append(f"{fused} spelled-out channel LayerNorms fused back into LayerNormalization nodes")
    options = keep_blocks_fp32(model, options, source)
    keep = sensitive_nodes(model) + list(options.keep_fp32)
    unquantized: list[str] = []
    if not keep:
        notes.append("no GLMix logits MatMul found: nothing is kept in fp32")
    samples: list[np.ndarray] = []
    if options.precision == "fp16":
        model = to_fp16(model, keep)
    else:
        assert options.calibration is not None
        try:
            meta = ArtifactMetadata.from_props(props)
        except MetadataError as exc:
            raise ExportError(f"{source}: {exc}; cannot tell how to preprocess calibration images") from None
        samples = calibration_samples(options.calibration, meta, options.calib_samples)
        unquantized = sensitive_nodes(model, include_slot_matmuls=True) + list(options.keep_fp32)
        model = int8_qdq_model(model, samples, unquantized, keep, options.calib_method)
    _set_metadata(model, options.precision, notes)
    model.doc_string = (model.doc_string + f" ({options.precision}: {len(keep)} nodes kept fp32)").strip()
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportError(f"the {options.precision} graph fails onnx.checker: {one_line(exc)}") from exc
    with atomic_outputs(output) as (temp,):
        onnx.save_model(model, temp)
    ops = [n.op_type for n in model.graph.node]
    return PrecisionResult(
        path=output, source=source, precision=options.precision, kept_fp32=keep, casts=ops.count("Cast"),
        quantized=ops.count("QuantizeLinear"), calibration_images=len(samples),
        seconds=time.perf_counter() - start, notes=notes, unquantized=unquantized,
    )
