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
import dataclasses
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

from artifacts.atomic import atomic_outputs, check_writable
from artifacts.calibration import DEFAULT_COUNT, CalibrationSet, SampleBatches, calibration_sizes, load_calibration
from artifacts.errors import ExportError, GlnetExportError, one_line
from artifacts.metadata import ArtifactMetadata, Quantization
from artifacts.onnx_blocks import block_nodes, block_order, resolve_blocks
from artifacts.onnx_file import read_onnx, set_metadata

from .onnx_int8_nodes import (
    INTEGER_KERNEL_OPS,
    SensitiveNodes,
    attention_matmuls,
    find_sensitive_nodes,
    float_inputs_back,
    quantized_op_counts,
)
from .passes.layer_norm import fuse_channel_layer_norms

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Int8Settings:
    """How `quantize_static` is called; the defaults are the measured choice below.

    glnet_4g (weights perturbed by glnet.testing), batch 1, 224 x 224, 64 calibration crops.
    Speed: CPU time per inference at 1 thread, int8 / fp32, alternated (robust to the other
    load on this 2-core machine; 2-thread wall ratios are ~0.1 higher). Accuracy: cosine
    (mean) vs fp32 onnxruntime on 10 photographs + 90 crops of them (* on 40 of them).
      A  quantize_static's defaults (all op types, shared Q/DQ)     0.79  0.9958*
      B  Conv/MatMul/Gemm, no Q after MatMuls (MatMulIntegerToFloat) 0.71  0.9961
      C  B + the slot attention's MatMuls in float                   0.67  0.9960
      C with the LayerNorms left spelled out                         0.70  0.9962
      C + depthwise Convs in float (their inputs stay int8)          0.82  0.9979
      D  B + DedicatedQDQPair (more QuantizeLinear nodes)             0.79  0.9972*
      D + int8 symmetric activations (S8S8 kernels, slow here)        1.30  0.9960*
      D with per-tensor weights                                             0.9967*
      D + Add quantized (QLinearAdd)                                  ~0.8  0.9719*
      D + h + DWConv(h) folded into the kernel first                  ~0.7  0.9856*
      Conv only, depthwise Convs in float on float inputs            1.07  0.9995
      C with the classifier's Gemm in float too: the defaults; bench.targets' 100 samples
        vs PyTorch: top-1 0.92 -> 0.96, cosine 0.99948 -> 0.99973, max abs error 3.07 -> 2.26
        (its input's per-tensor int8 step moves every logit the same way for all images)
      + float consumers (residual Adds) read the float tensor, not DQ(Q(x)) (float_inputs_back):
        2-thread wall vs the portable file 0.705 -> 0.680, cosine 0.99973 -> 0.99987, max abs
        error 2.26 -> 1.83; top-1 0.96 -> 0.95, every flip among the 19 narrowest fp32 margins
      quant_pre_process first: no faster (0.707 both); its symbolic shape inference fails
      on this graph, and its Transpose moves hide half the L2 normalisations from
      find_sensitive_nodes, so it is not used.
    Most of the int8 error of these random-weight logits comes from the per-tensor int8
    activations around the depthwise Convs; on a trained glnet_tiny (tests/helpers_trained)
    int8 agreed with fp32 on 200 of 200 held-out digits (cosine >= 0.999).
    """

    fuse_layer_norms: bool = True  # spelled-out channel LayerNorms -> LayerNormalization first
    # None: all onnxruntime can quantize. The one Gemm is the classifier: float costs nothing.
    op_types: tuple[str, ...] | None = ("Conv", "MatMul")
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
class OrtInt8Result:
    path: Path
    source: Path
    metadata: ArtifactMetadata  # as written: precision int8, target onnxruntime, `quantization`
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear
    quantized_ops: dict[str, int]  # op type -> nodes that take a DequantizeLinear output
    kept_float: SensitiveNodes  # the GLMix clustering nodes, by role (with `glmix_float`)
    calibration_images: int
    seconds: float
    excluded: list[str] = field(default_factory=list)  # every node left unquantized (+ slot attention MatMuls)
    notes: list[str] = field(default_factory=list)


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
                   settings: Int8Settings = SETTINGS, calibration_cache: Path | None = None) -> None:
    """Run onnxruntime's static QDQ quantization of `model` into `output` (no metadata handling).

    `calibration_cache`: a file for the measured ranges (quantize_static's own JSON cache),
    read when it exists, else written; the ranges do not depend on the nodes left out, so
    a search over what stays in float (`export.onnxruntime_int8_budget`) calibrates once."""
    import onnxruntime.quantization as oq

    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    batch = graph_inputs[0].type.tensor_type.shape.dim[0].dim_value or 1
    if len(samples) < batch:
        raise ExportError(f"the input has a fixed batch of {batch}: give at least {batch} calibration images")
    reader = SampleBatches(samples, graph_inputs[0].name, batch)
    oq.CalibrationDataReader.register(SampleBatches)  # a virtual subclass: quantize_static checks isinstance
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
            extra_options=extra, calibration_cache_path=calibration_cache,
        )


def scheme_of(settings: Int8Settings) -> str:
    """The quantization scheme in words, for the metadata and the summary."""
    acts = f"{settings.activation_type} {'symmetric' if settings.activation_symmetric else 'asymmetric'} per-tensor"
    weights = f"int8 symmetric {'per-channel' if settings.per_channel else 'per-tensor'}"
    return f"Q/DQ, weights {weights}, activations {acts}, {settings.calibrate_method} calibration"


def output_for(source: Path, output_path: str | Path | None) -> Path:
    """Where the int8 file of `source` goes (default: NAME_ort_int8.onnx beside it); one line
    when that would overwrite the fp32 source or cannot be written, before any slow work."""
    from .onnxruntime import default_output

    output = Path(output_path) if output_path is not None else default_output(source, precision="int8")
    if output.resolve() == source.resolve():
        raise ExportError(f"{output}: would overwrite the fp32 source; choose another -o")
    try:
        check_writable(output)
    except GlnetExportError as exc:
        raise ExportError(str(exc)) from None
    return output


@dataclass
class PreparedSource:
    """The portable fp32 file as every quantization of it starts: read and checked, its nodes
    named, `settings`' graph passes run and the nodes kept in float found. A search over what
    stays in float (`export.onnxruntime_int8_budget`) prepares it once for all its candidates;
    `quantize_prepared` quantizes a copy of `model`, which stays as prepared."""

    path: Path
    model: onnx.ModelProto
    meta: ArtifactMetadata
    settings: Int8Settings
    passes: dict[str, int]
    glmix: SensitiveNodes  # GLMix's clustering nodes, by role
    attention: list[str]  # the slot attention's MatMuls (with settings.float_attention)
    blocks: list[str]  # the GLNet blocks, in network order (only when asked for: a file may have no block map)
    block_nodes: dict[str, list[str]]  # block -> its nodes after the passes (likewise)


def prepare_source(source: Path, settings: Int8Settings = SETTINGS, blocks: bool = False) -> PreparedSource:
    """`source` read once and made ready to quantize (PreparedSource); `blocks`: also list its
    GLNet blocks (BlockMapError, naming the file, when it has no block map)."""
    from .onnxruntime import check_portable_fp32, metadata_of

    try:
        model = read_onnx(source)
    except GlnetExportError as exc:
        raise ExportError(str(exc)) from None
    meta = metadata_of(model, source)
    check_portable_fp32(meta, source)
    known = list(block_nodes(model, source)) if blocks else []
    for i, node in enumerate(model.graph.node):  # nodes_to_exclude works by name
        node.name = node.name or f"unnamed_{node.op_type}_{i}"
    passes: dict[str, int] = {}
    if settings.fuse_layer_norms:
        # One LayerNormalization node runs faster here than the ~10 elementwise nodes the
        # deploy form spells out (export.passes.layer_norm): int8 CPU time 0.67 vs 0.70 of fp32.
        passes["layer_norm"] = fuse_channel_layer_norms(model)
    glmix = find_sensitive_nodes(model)
    attention = attention_matmuls(model, set(glmix.softmaxes)) if settings.float_attention else []
    in_blocks = block_nodes(model) if blocks else {}  # after the fusion: its nodes count too
    return PreparedSource(source, model, meta, settings, passes, glmix, attention, known, in_blocks)


def calibration_set(calib: CalibrationSet | Path | str, meta: ArtifactMetadata, count: int,
                    say: Callable[[str], None]) -> CalibrationSet:
    """`calib` itself when loaded already, else up to `count` images of that folder,
    preprocessed as `meta` says (at three sizes for a dynamic-shape file)."""
    if isinstance(calib, CalibrationSet):
        return calib
    say(f"reading calibration images from {calib}")
    try:
        return load_calibration(calib, meta, count=count, sizes=calibration_sizes(meta))
    except GlnetExportError as exc:
        raise ExportError(f"calibration: {exc}") from None


def quantize_onnxruntime_int8(onnx_path: str | Path, output_path: str | Path | None, calib: CalibrationSet | str | Path,
                              calib_count: int = DEFAULT_COUNT, glmix_float: bool = True,
                              progress: Progress | None = None, settings: Int8Settings = SETTINGS,
                              keep_float: Sequence[str] = (), calibration_cache: Path | None = None,
                              budget_blocks: Sequence[str] = ()) -> OrtInt8Result:
    """Write the int8 (QDQ) form of the portable glnet-export ONNX file `onnx_path` to `output_path`
    (default: NAME_ort_int8.onnx beside it).

    `calib` is a loaded CalibrationSet or a folder of images (up to `calib_count` of them,
    preprocessed as the file's metadata says; at three sizes for a dynamic-shape file).
    With `glmix_float`, GLMix's clustering nodes are excluded from quantization;
    `keep_float` names whole blocks (checkpoint-layout names, `artifacts.onnx_blocks`) to
    leave in float too; `budget_blocks` likewise, for blocks an accuracy budget (--max-drop,
    `export.onnxruntime_int8_budget`) keeps in float, so the words name each group's option.
    The metadata is the source's with precision int8, target onnxruntime, `quantization`
    saying what was quantized and `kept_float` every kept block (both groups, network order).
    """
    source = Path(onnx_path)
    output = output_for(source, output_path)
    start = time.perf_counter()
    prepared = prepare_source(source, settings, blocks=bool(keep_float or budget_blocks))
    result = quantize_prepared(prepared, output, calib, calib_count, glmix_float, progress, keep_float,
                               calibration_cache, budget_blocks)
    result.seconds = time.perf_counter() - start
    return result


def quantize_prepared(prepared: PreparedSource, output: Path, calib: CalibrationSet | str | Path,
                      calib_count: int = DEFAULT_COUNT, glmix_float: bool = True, progress: Progress | None = None,
                      keep_float: Sequence[str] = (), calibration_cache: Path | None = None,
                      budget_blocks: Sequence[str] = ()) -> OrtInt8Result:
    """`quantize_onnxruntime_int8` of a prepared source (`prepare_source`, with `blocks` when
    `keep_float` or `budget_blocks` name any) into `output`, whose checks (`output_for`) are
    the caller's."""
    from .onnxruntime import TARGET
    from .passes import ONNXRUNTIME_REQUIRES

    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    notes: list[str] = []
    source, meta, settings, known = prepared.path, prepared.meta, prepared.settings, prepared.blocks
    if (keep_float or budget_blocks) and not known:  # a caller's mistake, not the user's: say which
        raise ValueError("quantize_prepared was given blocks to keep in float: prepare the source with "
                         "prepare_source(..., blocks=True)")
    user_blocks = resolve_blocks(keep_float, known) if keep_float else ()
    budget_only = [b for b in resolve_blocks(budget_blocks, known) if b not in user_blocks] if budget_blocks else []
    kept_blocks = tuple(sorted((*user_blocks, *budget_only), key=block_order))
    calib = calibration_set(calib, meta, calib_count, say)
    if not calib.samples:
        raise ExportError(f"no usable calibration images in {calib.folder}")
    if calib.skipped:
        notes.append(f"skipped {len(calib.skipped)} unreadable calibration file(s), e.g. {calib.skipped[0]}")
    if len(calib) < 50:
        notes.append(f"only {len(calib)} calibration images; 100-300 give steadier ranges")
    # quantize_static moves a ModelProto's weights to a file of its own temporary folder,
    # emptying the proto it was given: each quantization gets its own copy.
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    passes, glmix, attention, in_blocks = (dict(prepared.passes), prepared.glmix, prepared.attention,
                                           prepared.block_nodes)
    sensitive = glmix if glmix_float else SensitiveNodes()
    if glmix_float and not sensitive.logits_matmuls:
        notes.append("no GLMix logits MatMul found: nothing is kept in float")
    block_float = [n for b in kept_blocks for n in in_blocks[b]]
    exclude = list(dict.fromkeys(sensitive.names + attention + block_float))
    say(f"calibrating on {len(calib)} images and quantizing (keeping {sensitive.describe()} in float)")
    with atomic_outputs(output) as (temp,):
        try:
            quantize_model(model, temp, calib.samples, exclude, settings, calibration_cache)
            quantized = onnx.load(str(temp))
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"onnxruntime int8 quantization failed: {one_line(exc)}") from exc
        rewired = float_inputs_back(quantized, set(sensitive.names) | set(block_float), settings.op_types)
        notes.append(f"{rewired} inputs of float nodes read the float tensor, not its int8 copy")
        kept = [sensitive.describe()] if glmix_float else []
        kept += [f"blocks {', '.join(user_blocks)} (--keep-float)"] if user_blocks else []
        kept += [f"blocks {', '.join(budget_only)} (--max-drop)"] if budget_only else []
        kept += [f"{len(attention)} slot-attention MatMuls"] if attention else []
        if settings.op_types:
            kept += ["the classifier Gemm"] if "Gemm" not in settings.op_types else []
            kept += [f"every op but {', '.join(settings.op_types)} (Add, GELU, LayerNorm, Softmax: no int8 "
                     "kernels worth their Q/DQ in onnxruntime's CPU provider)"]
        import onnxruntime

        meta = dataclasses.replace(
            meta, precision="int8", target=TARGET, requires=ONNXRUNTIME_REQUIRES, graph_passes=passes,
            quantization=Quantization(
                tool=f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}", scheme=scheme_of(settings),
                quantized_ops=quantized_op_counts(quantized, settings.op_types or INTEGER_KERNEL_OPS),
                kept_float="; ".join(kept),
                calibration_images=len(calib)), kept_float=kept_blocks)
        set_metadata(quantized, meta)
        quantized.doc_string = (model.doc_string + " (int8 QDQ for onnxruntime)").strip()
        say(f"writing {output}")
        onnx.save_model(quantized, str(temp))
    ops = Counter(n.op_type for n in quantized.graph.node)
    assert meta.quantization is not None
    return OrtInt8Result(
        path=output, source=source, metadata=meta, qdq_nodes=ops["QuantizeLinear"] + ops["DequantizeLinear"],
        quantized_ops=meta.quantization.quantized_ops, kept_float=sensitive, calibration_images=len(calib),
        seconds=time.perf_counter() - start, excluded=exclude, notes=notes,
    )
