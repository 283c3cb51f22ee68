"""glnet-export ONNX -> int8 ONNX (QuantizeLinear/DequantizeLinear) for onnxruntime's CPU kernels.

Static post-training quantization with onnxruntime's own tooling (`quantize_static`, QDQ
format) on calibration images. GLMix's soft clustering stays in float, for the reason
`export.openvino_int8` gives: the slots and pixels are L2-normalised unit vectors whose
cosine "logits" are multiplied by a learned temperature and go through two softmaxes, so
8-bit steps of ~1/127 on the unit vectors, times the temperature, shift every softmax.
Those nodes are found by graph structure (ReduceL2 -> Clip -> Div, the MatMul of two such
outputs, the Softmaxes fed by it and the MatMuls fed by those), never by name.

Measured on glnet_4g with perturbed weights (slot temperatures 2-10), keeping them in float
costs nothing and changed nothing measurable (cosine 0.9960 both, CPU time 0.68 of fp32
both); `export.openvino_int8` saw the gain only with sharper temperatures (25).

Unlike `export.precision`'s int8 file (symmetric int8, the form TensorRT wants), this file
is tuned for onnxruntime on a CPU; the measurements behind each choice are at SETTINGS.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from glnet_export.atomic import atomic_outputs, check_writable
from glnet_export.calibration import CalibrationSet, load_calibration
from glnet_export.errors import ExportError, GlnetExportError, one_line
from glnet_export.metadata import ArtifactMetadata, MetadataError
from glnet_export.onnx_file import read_onnx

from .passes.layer_norm import fuse_channel_layer_norms
from .precision import _Batches

Progress = Callable[[str], None]
# Nodes between an L2 normalisation and the logits MatMul: shape plumbing and the temperature.
_PASS_THROUGH = frozenset({"Mul", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Cast"})
_SEARCH_DEPTH = 6


@dataclass(frozen=True)
class Int8Settings:
    """How `quantize_static` is called; the defaults are the measured choice below.

    glnet_4g (weights perturbed by glnet.testing), batch 1, 224 x 224, 64 calibration crops.
    Speed: CPU time per inference at 1 thread, int8 / fp32, alternated (robust to the other
    load on this 2-core machine; 2-thread wall ratios are ~0.1 higher). Accuracy: cosine
    (mean) vs fp32 onnxruntime on 10 photographs + 90 crops of them (* on 40 of them).
      A  quantize_static's defaults (all op types, shared Q/DQ)     0.79  0.9958*
      B  Conv/MatMul/Gemm, no Q after MatMuls (MatMulIntegerToFloat) 0.71  0.9961
      C  B + the slot attention's MatMuls in float: the defaults     0.67  0.9960
      C with the LayerNorms left spelled out                         0.70  0.9962
      C + depthwise Convs in float (their inputs stay int8)          0.82  0.9979
      D  B + DedicatedQDQPair (more QuantizeLinear nodes)             0.79  0.9972*
      D + int8 symmetric activations (S8S8 kernels, slow here)        1.30  0.9960*
      D with per-tensor weights                                             0.9967*
      D + Add quantized (QLinearAdd)                                  ~0.8  0.9719*
      D + h + DWConv(h) folded into the kernel first                  ~0.7  0.9856*
      Conv only, depthwise Convs in float on float inputs            1.07  0.9995
      quant_pre_process first: no faster (0.707 both); its symbolic shape inference fails
      on this graph, and its Transpose moves hide half the L2 normalisations from
      find_sensitive_nodes, so it is not used.
    Most of the int8 error of these random-weight logits comes from the per-tensor int8
    activations around the depthwise Convs; on a trained glnet_tiny (tests/helpers_trained)
    int8 agreed with fp32 on 200 of 200 held-out digits (cosine >= 0.999).
    """

    fuse_layer_norms: bool = True  # spelled-out channel LayerNorms -> LayerNormalization first
    op_types: tuple[str, ...] | None = ("Conv", "MatMul", "Gemm")  # None: all onnxruntime can quantize
    per_channel: bool = True
    activation_type: str = "uint8"  # uint8 asymmetric: the U8S8 kernels (VNNI); "int8" is symmetric S8S8
    activation_symmetric: bool = False
    calibrate_method: str = "minmax"  # or "entropy", "percentile"
    # The attention among the 64 slots works on 64 x 64 matrices: too small for int8 to pay
    # for quantizing its inputs on every call.
    float_attention: bool = True
    # A MatMul's output Q/DQ only makes onnxruntime pick QLinearMatMul + DequantizeLinear
    # over MatMulIntegerToFloat, and puts a QLinearSoftmax (slow) after the score MatMul.
    extra_options: tuple[tuple[str, object], ...] = (("OpTypesToExcludeOutputQuantization", ["MatMul"]),)


SETTINGS = Int8Settings()


@dataclass
class SensitiveNodes:
    """Nodes of one graph that int8 leaves in float, by role (node names)."""

    l2_norms: list[str] = field(default_factory=list)  # ReduceL2 (or Sqrt of a sum of squares) -> Clip/Max -> Div
    logits_matmuls: list[str] = field(default_factory=list)
    temperatures: list[str] = field(default_factory=list)  # the Mul by slot_scale before the logits MatMul
    softmaxes: list[str] = field(default_factory=list)
    softmax_matmuls: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.l2_norms + self.temperatures + self.logits_matmuls + self.softmaxes
                                  + self.softmax_matmuls))

    def describe(self) -> str:
        return (f"{len(self.logits_matmuls)} logits MatMul, {len(self.temperatures)} temperature Mul, "
                f"{len(self.softmaxes)} slot Softmax, {len(self.softmax_matmuls)} softmax MatMul, "
                f"{len(self.l2_norms) // 3} L2 normalisations")


@dataclass
class OrtInt8Result:
    path: Path
    source: Path
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear
    quantized_ops: dict[str, int]  # op type -> nodes that take a DequantizeLinear output
    kept_float: SensitiveNodes  # the GLMix clustering nodes, by role
    calibration_images: int
    seconds: float
    excluded: list[str] = field(default_factory=list)  # every node left unquantized (+ slot attention MatMuls)
    notes: list[str] = field(default_factory=list)


def _graph_maps(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return producer, users


def _norm_nodes(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """The nodes computing ||x||: ReduceL2, or Sqrt(ReduceSum(Pow|Mul(x))) / Sqrt(ReduceSumSquare(x))."""
    if node.op_type == "ReduceL2":
        return [node]
    if node.op_type != "Sqrt" or node.input[0] not in producer:
        return None
    total = producer[node.input[0]]
    if total.op_type == "ReduceSumSquare":
        return [total, node]
    square = producer.get(total.input[0]) if total.op_type == "ReduceSum" else None
    if square is not None and square.op_type in ("Pow", "Mul"):
        return [square, total, node]
    return None


def find_sensitive_nodes(model: onnx.ModelProto) -> SensitiveNodes:
    """The GLMix clustering nodes of `model`, found by structure."""
    graph = model.graph
    producer, users = _graph_maps(graph)
    found = SensitiveNodes()
    divides: set[str] = set()  # outputs of the normalising Divs
    for node in graph.node:
        norm = _norm_nodes(node, producer)
        if norm is None:
            continue
        for clamp in users.get(node.output[0], []):
            if clamp.op_type not in ("Clip", "Max"):
                continue
            for div in users.get(clamp.output[0], []):
                if div.op_type == "Div" and div.input[1] == clamp.output[0]:
                    found.l2_norms += [n.name for n in norm] + [clamp.name, div.name]
                    divides.add(div.output[0])

    def walk(name: str, depth: int, seen: list[onnx.NodeProto]) -> list[onnx.NodeProto] | None:
        """The pass-through nodes from a normalised tensor to `name`, or None if it is not one."""
        if name in divides:
            return seen
        up = producer.get(name)
        if up is None or depth == 0 or up.op_type not in _PASS_THROUGH:
            return None
        for i in up.input:
            path = walk(i, depth - 1, [*seen, up])
            if path is not None:
                return path
        return None

    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        paths = [walk(i, _SEARCH_DEPTH, []) for i in node.input]
        if any(p is None for p in paths):
            continue
        found.logits_matmuls.append(node.name)
        found.temperatures += [n.name for p in paths if p for n in p if n.op_type == "Mul"]
        for soft in users.get(node.output[0], []):
            if soft.op_type != "Softmax":
                continue
            found.softmaxes.append(soft.name)
            after = list(users.get(soft.output[0], []))  # directly, or through a Transpose/Reshape
            after += [u for a in after if a.op_type in ("Transpose", "Reshape") for u in users.get(a.output[0], [])]
            found.softmax_matmuls += [u.name for u in after if u.op_type == "MatMul"]
    return found


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """quantize_static logs and warns on the root logger and prints progress; we report our own."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            root.setLevel(level)


def quantize_model(model: onnx.ModelProto, output: Path, samples: Sequence[np.ndarray], exclude: Sequence[str],
                   settings: Int8Settings = SETTINGS) -> None:
    """Run onnxruntime's static QDQ quantization of `model` into `output` (no metadata handling)."""
    import onnxruntime.quantization as oq

    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    batch = graph_inputs[0].type.tensor_type.shape.dim[0].dim_value or 1
    if len(samples) < batch:
        raise ExportError(f"the input has a fixed batch of {batch}: give at least {batch} calibration images")
    reader = _Batches(samples, graph_inputs[0].name, batch)  # the reader of the TensorRT Q/DQ file
    oq.CalibrationDataReader.register(_Batches)  # a virtual subclass: quantize_static checks isinstance
    methods = {"minmax": oq.CalibrationMethod.MinMax, "entropy": oq.CalibrationMethod.Entropy,
               "percentile": oq.CalibrationMethod.Percentile}
    act = oq.QuantType.QUInt8 if settings.activation_type == "uint8" else oq.QuantType.QInt8
    extra = {"ActivationSymmetric": settings.activation_symmetric, "WeightSymmetric": True,
             **dict(settings.extra_options)}
    with _quiet():
        oq.quantize_static(
            model, output, reader, quant_format=oq.QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
            per_channel=settings.per_channel, activation_type=act, weight_type=oq.QuantType.QInt8,
            nodes_to_exclude=list(exclude), calibrate_method=methods[settings.calibrate_method],
            extra_options=extra,
        )


def attention_matmuls(model: onnx.ModelProto, skip: set[str]) -> list[str]:
    """The score MatMul before, and the MatMul after, each Softmax not in `skip`."""
    producer, users = _graph_maps(model.graph)
    found = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or node.name in skip:
            continue
        before = producer.get(node.input[0])
        found += [before.name] if before is not None and before.op_type == "MatMul" else []
        found += [u.name for u in users.get(node.output[0], []) if u.op_type == "MatMul"]
    return found


def float_inputs_back(model: onnx.ModelProto, keep: set[str]) -> int:
    """Give nodes that stay in float their float inputs back; returns how many inputs were rewired.

    quantize_static shares one QuantizeLinear/DequantizeLinear pair among all consumers
    of a tensor, so an excluded node whose input also feeds a quantized Conv still reads
    the int8-rounded DequantizeLinear output: in every GLMix block the LayerNorm output
    feeds the feature Conv and, through a Transpose and a Reshape, the L2 normalisation
    and the clustering MatMul. `DedicatedQDQPair` does not help (it dedicates pairs to
    quantized consumers only) and costs 8% more time for its extra QuantizeLinear nodes.
    """
    graph = model.graph
    producer, users = _graph_maps(graph)
    memo: dict[str, bool] = {}

    def stays_float(node: onnx.NodeProto) -> bool:
        """In `keep`, or shape plumbing whose every consumer stays in float."""
        if node.name not in memo:
            after = users.get(node.output[0], [])
            memo[node.name] = node.name in keep or (
                node.op_type in ("Transpose", "Reshape", "Squeeze", "Unsqueeze") and bool(after)
                and all(stays_float(u) for u in after))
        return memo[node.name]

    inits = {t.name for t in graph.initializer}
    rewired = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not stays_float(node):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
                node.input[i] = q.input[0]
                rewired += 1
    # Drop the pairs nothing reads any more (DequantizeLinear first, then its QuantizeLinear).
    outputs = {o.name for o in graph.output}
    for op in ("DequantizeLinear", "QuantizeLinear"):
        read = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == op and n.output[0] not in read]
        for n in dead:
            graph.node.remove(n)
    read = {name for n in graph.node for name in n.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:  # their scales and zero points
        graph.initializer.remove(tensor)
    return rewired


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op type -> nodes (other than Q/DQ) that read at least one DequantizeLinear output."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return dict(Counter(n.op_type for n in model.graph.node
                        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq & set(n.input)))


def quantize_onnxruntime_int8(onnx_path: str | Path, output_path: str | Path, calib: CalibrationSet | str | Path,
                              keep_float: bool = True, progress: Progress | None = None,
                              settings: Int8Settings = SETTINGS) -> OrtInt8Result:
    """Write the int8 (QDQ) form of the glnet-export ONNX file `onnx_path` to `output_path`.

    `calib` is a loaded CalibrationSet or a folder of images (preprocessed as the file's
    metadata says). With `keep_float`, GLMix's clustering nodes are excluded from
    quantization. Every metadata property is kept, with `precision` set to "int8".
    """
    say = progress or (lambda _msg: None)
    source, output = Path(onnx_path), Path(output_path)
    start = time.perf_counter()
    notes: list[str] = []
    try:
        check_writable(output)
        model = read_onnx(source)
    except GlnetExportError as exc:
        raise ExportError(str(exc)) from None
    props = {p.key: p.value for p in model.metadata_props}
    try:
        meta = ArtifactMetadata.from_props(props)
    except MetadataError as exc:
        raise ExportError(f"{source}: {exc}") from None
    if meta.precision != "fp32":
        raise ExportError(f"{source}: is already {meta.precision}; int8 starts from an fp32 file")
    if not isinstance(calib, CalibrationSet):
        try:
            calib = load_calibration(calib, meta)
        except GlnetExportError as exc:
            raise ExportError(f"calibration: {exc}") from None
    if not calib.samples:
        raise ExportError(f"no usable calibration images in {calib.folder}")
    if calib.skipped:
        notes.append(f"{len(calib.skipped)} calibration files skipped (unreadable)")
    for i, node in enumerate(model.graph.node):  # nodes_to_exclude works by name
        node.name = node.name or f"unnamed_{node.op_type}_{i}"

    if settings.fuse_layer_norms:
        # One LayerNormalization node runs faster here than the ~10 elementwise nodes the
        # deploy form spells out (export.passes.layer_norm): int8 CPU time 0.67 vs 0.70 of fp32.
        fused = fuse_channel_layer_norms(model)
        if fused:
            notes.append(f"{fused} spelled-out channel LayerNorms fused into LayerNormalization")
    glmix = find_sensitive_nodes(model)
    sensitive = glmix if keep_float else SensitiveNodes()
    if keep_float and not sensitive.logits_matmuls:
        notes.append("no GLMix logits MatMul found: nothing is kept in float")
    exclude = sensitive.names + (attention_matmuls(model, set(glmix.softmaxes)) if settings.float_attention else [])
    say(f"calibrating on {len(calib)} images and quantizing (keeping {sensitive.describe()} in float)")
    with atomic_outputs(output) as (temp,):
        try:
            quantize_model(model, temp, calib.samples, exclude, settings)
            quantized = onnx.load(str(temp))
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"onnxruntime int8 quantization failed: {one_line(exc)}") from exc
        if keep_float:
            rewired = float_inputs_back(quantized, set(sensitive.names))
            notes.append(f"{rewired} inputs of float nodes read the float tensor, not its int8 copy")
        del quantized.metadata_props[:]
        for key, value in {**props, "precision": "int8"}.items():
            quantized.metadata_props.add(key=key, value=value)
        quantized.doc_string = (model.doc_string + " (int8 QDQ for onnxruntime)").strip()
        say(f"writing {output}")
        onnx.save_model(quantized, str(temp))
    ops = Counter(n.op_type for n in quantized.graph.node)
    return OrtInt8Result(
        path=output, source=source, qdq_nodes=ops["QuantizeLinear"] + ops["DequantizeLinear"],
        quantized_ops=quantized_op_counts(quantized), kept_float=sensitive, calibration_images=len(calib),
        seconds=time.perf_counter() - start, excluded=exclude, notes=notes,
    )
