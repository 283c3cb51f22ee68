"""int8 post-training quantization of an OpenVINO model with NNCF, GLMix-aware.

GLMix's soft clustering is the numerically delicate part of GLNet: the 64 slots and the
pixels are L2-normalised, their cosine "logits" are multiplied by a learned temperature
(trained GLNets learn values well above 1) and go through two softmaxes. Quantizing the
unit vectors to 8 bits (steps of ~1/127), then scaling by the temperature, shifts every
softmax; so the L2 normalisations, the logits MatMul, the slot softmaxes and the MatMuls
that consume them stay in float through NNCF's `ignored_scope`. The nodes are found by
graph structure, not by name, so any exporter's naming works.

Measured on glnet_tiny (FIELD_NOTES-style, 30-40 samples, so small effects only): keeping
them in float removes 6 (static) or 12 (dynamic shape) of ~70 FakeQuantize nodes; on a
model with sharp temperatures (25) the top-5 set agreement with fp32 rose from 87% to 97%
while the max error was unchanged; on trained digits (temperatures ~0.2) no difference.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artifacts.errors import ExportError, one_line
from artifacts.metadata import Quantization
from artifacts.onnx_blocks import fill_blocks

# Nodes between an L2 normalisation and the logits MatMul: shape plumbing and the temperature.
_PASS_THROUGH = frozenset({"Broadcast", "Reshape", "Transpose", "Multiply", "Convert", "Unsqueeze", "Squeeze"})
_SEARCH_DEPTH = 6


def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        from artifacts.backends import BackendUnavailableError

        raise BackendUnavailableError("NNCF is not installed (needed for int8): "
                                      "pip install 'glnet-export[openvino]'") from None
    return nncf


@dataclass
class SensitiveNodes:
    """Nodes of one graph that int8 must leave in float, by role (friendly names)."""

    l2_norms: list[str] = field(default_factory=list)  # ReduceL2 -> Clamp/Maximum -> Divide
    logits_matmuls: list[str] = field(default_factory=list)
    softmaxes: list[str] = field(default_factory=list)
    softmax_matmuls: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.l2_norms + self.logits_matmuls + self.softmaxes + self.softmax_matmuls

    def describe(self) -> str:
        return (f"{len(self.logits_matmuls)} logits MatMul, {len(self.softmaxes)} slot softmax, "
                f"{len(self.softmax_matmuls)} softmax MatMul, {len(self.l2_norms) // 3} L2 normalisations")


def _consumers(op: Any) -> list[Any]:
    return [target.get_node() for out in op.outputs() for target in out.get_target_inputs()]


def _producer(op: Any, index: int) -> Any:
    return op.input_value(index).get_node()


def _reaches(op: Any, targets: set[str], depth: int = _SEARCH_DEPTH) -> bool:
    """Whether `op` is fed by one of `targets` through pass-through nodes only."""
    if op.get_friendly_name() in targets:
        return True
    if depth == 0 or op.get_type_name() not in _PASS_THROUGH:
        return False
    return any(_reaches(_producer(op, i), targets, depth - 1) for i in range(op.get_input_size()))


def find_sensitive_nodes(model: Any) -> SensitiveNodes:
    """The GLMix clustering nodes of `model` (an openvino.Model), found by structure."""
    found = SensitiveNodes()
    divides: set[str] = set()
    ops = model.get_ordered_ops()
    for op in ops:
        if op.get_type_name() != "ReduceL2":
            continue
        for clamp in _consumers(op):
            if clamp.get_type_name() not in ("Clamp", "Maximum"):
                continue
            for div in _consumers(clamp):
                if div.get_type_name() == "Divide":
                    found.l2_norms += [op.get_friendly_name(), clamp.get_friendly_name(), div.get_friendly_name()]
                    divides.add(div.get_friendly_name())
    for op in ops:
        # The logits MatMul multiplies two normalised tensors (slots and pixels).
        if op.get_type_name() == "MatMul" and all(_reaches(_producer(op, i), divides) for i in range(2)):
            found.logits_matmuls.append(op.get_friendly_name())
    logits = set(found.logits_matmuls)
    for op in ops:
        if op.get_type_name() == "Softmax" and _producer(op, 0).get_friendly_name() in logits:
            found.softmaxes.append(op.get_friendly_name())
            found.softmax_matmuls += [c.get_friendly_name() for c in _consumers(op) if c.get_type_name() == "MatMul"]
    return found


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF draws progress bars and logs on its own; the CLI reports progress itself."""
    nncf = _nncf()
    logger = logging.getLogger("nncf")
    level = logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        nncf.set_log_level(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


def ignored_scope(model: Any, glmix_float: bool = True, depthwise: bool = True,
                  keep_float: Sequence[str] = ()) -> tuple[Any, SensitiveNodes]:
    """NNCF's ignored scope of int8 on `model` (None when nothing is ignored), and the GLMix
    nodes in it: the GLMix clustering nodes (unless `glmix_float` is False), the ops named in
    `keep_float` (friendly names) and, without `depthwise`, every GroupConvolution. The one
    place both `quantize_int8` and `export.openvino_int8_budget` take what stays float from."""
    sensitive = find_sensitive_nodes(model) if glmix_float else SensitiveNodes()
    names = list(dict.fromkeys(sensitive.names + list(keep_float)))
    types = [] if depthwise else ["GroupConvolution"]
    return (_nncf().IgnoredScope(names=names, types=types) if names or types else None), sensitive


def quantize_int8(model: Any, samples: list[np.ndarray], glmix_float: bool = True,
                  depthwise: bool = True, keep_float: Sequence[str] = ()) -> tuple[Any, SensitiveNodes]:
    """NNCF post-training int8 of an openvino.Model on calibration `samples` (1x3xHxW each).

    Returns the quantized model and the GLMix nodes kept in float (empty when `glmix_float`
    is False). `keep_float`: more ops (friendly names, see `block_ops`) to leave in float.
    ModelType.TRANSFORMER: SmoothQuant and the transformer-aware placement of quantizers
    (the attention softmax outputs stay in float). Without `depthwise` the depthwise
    (grouped) convolutions get no FakeQuantize and run in the device's float precision:
    they are memory-bound, so int8 gains little in them, while the quantize steps around
    them cost time (README, "int8 on the CPU").
    """
    nncf = _nncf()
    scope, sensitive = ignored_scope(model, glmix_float, depthwise, keep_float)
    try:
        with _quiet_nncf():
            quantized = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(samples), ignored_scope=scope)
    except Exception as exc:
        raise ExportError(f"NNCF int8 quantization failed: {one_line(exc)}") from exc
    return quantized, sensitive


def count_fake_quantize(model: Any) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


_INT8_TYPES = ("i8", "u8")
_LAYOUT_OPS = frozenset({"Transpose", "Reshape"})


def _is_int8_operand(node: Any) -> bool:
    """Whether `node` feeds an int8 value: a FakeQuantize (activations), or the dequantize
    chain NNCF stores a compressed weight as (int8 Constant -> Convert -> [Subtract] ->
    Multiply), either seen through layout-only Transpose / Reshape nodes."""
    while node.get_type_name() in _LAYOUT_OPS:
        node = _producer(node, 0)
    if node.get_type_name() == "FakeQuantize":
        return True
    for expected in ("Multiply", "Subtract"):
        if node.get_type_name() == expected:
            node = _producer(node, 0)
    if node.get_type_name() != "Convert":
        return False
    source = _producer(node, 0)
    return source.get_type_name() == "Constant" and source.get_output_element_type(0).get_type_name() in _INT8_TYPES


def quantized_op_counts(model: Any) -> dict[str, int]:
    """Op type -> convolutions and MatMuls that compute in int8: both operands (data and weight,
    or A and B) are int8 values, which the CPU plugin turns into integer kernels."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        if all(_is_int8_operand(_producer(op, i)) for i in range(2)):
            counts[op.get_type_name()] = counts.get(op.get_type_name(), 0) + 1
    return counts


def quantization_record(model: Any, sensitive: SensitiveNodes, glmix_float: bool, images: int,
                        depthwise: bool = True, blocks: Sequence[str] = ()) -> Quantization:
    """What `quantize_int8` did, for the IR's metadata."""
    nncf = _nncf()
    kept = sensitive.describe() if glmix_float else "no GLMix nodes kept on purpose (--no-glmix-float)"
    if blocks:
        kept += f"; blocks {', '.join(blocks)} (--keep-float)"
    if not depthwise:
        kept += "; depthwise convolutions (--no-int8-depthwise)"
    return Quantization(
        tool=f"nncf.quantize {nncf.__version__}, ModelType.TRANSFORMER",
        scheme="FakeQuantize, weights int8 symmetric per-channel, activations 8-bit per-tensor (NNCF's mixed "
               "preset), SmoothQuant",
        quantized_ops=quantized_op_counts(model), kept_float=kept, calibration_images=images)


_NOT_COMPUTE = frozenset({"Constant", "Parameter", "Result"})


def block_ops(model: Any, onnx_blocks: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Block -> the friendly names of its compute ops in the openvino.Model converted from an
    ONNX file whose nodes are `onnx_blocks` (`artifacts.onnx_blocks.block_nodes`).

    OpenVINO names an op after the ONNX node it comes from, or that name plus a suffix
    ("node_conv2d/WithoutBiases" for a Conv split from its bias); ops it makes of its own
    (a LayerNormalization's MVN, say) take their neighbours' block, as in the ONNX graph."""
    of_node = {name: block for block, names in onnx_blocks.items() for name in names}
    ops = model.get_ordered_ops()
    ids = [op.get_friendly_name() for op in ops]
    known = {}
    for name in ids:
        block = of_node.get(name, of_node.get(name.split("/")[0]))
        if block is not None:
            known[name] = block
    consumers = {op.get_friendly_name(): [c.get_friendly_name() for c in _consumers(op)] for op in ops}
    producers = {op.get_friendly_name(): [_producer(op, i).get_friendly_name() for i in range(op.get_input_size())]
                 for op in ops}
    blocks = fill_blocks(ids, consumers, producers, known)
    found: dict[str, list[str]] = {block: [] for block in onnx_blocks}
    for op, name in zip(ops, ids, strict=True):
        if name in blocks and op.get_type_name() not in _NOT_COMPUTE:
            found[blocks[name]].append(name)
    return found
