"""Which nodes of a glnet-export ONNX graph int8 leaves in float, found by graph structure.

GLMix's soft clustering (`export.onnxruntime_int8` says why it stays in float): the L2
normalisations (ReduceL2 -> Clip -> Div), the MatMul of two such outputs, the Softmaxes
fed by it and the MatMuls fed by those; never by name, so any exporter's naming works.
Also the graph edits around quantize_static's output that depend on the same search.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx

# Nodes between an L2 normalisation and the logits MatMul: shape plumbing and the temperature.
_PASS_THROUGH = frozenset({"Mul", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Cast"})
_SEARCH_DEPTH = 6
# The op types onnxruntime's CPU provider has integer kernels for (QLinearConv, MatMulInteger...).
INTEGER_KERNEL_OPS = ("Conv", "MatMul", "Gemm")
# Shape plumbing: float or int8 as its consumers are (onnxruntime moves Q/DQ across it).
_PLUMBING = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze"})


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


def float_inputs_back(model: onnx.ModelProto, keep: set[str], quantized_types: tuple[str, ...] | None = None) -> int:
    """Give nodes that stay in float their float inputs back; returns how many inputs were rewired.

    quantize_static shares one QuantizeLinear/DequantizeLinear pair among all consumers
    of a tensor, so an excluded node whose input also feeds a quantized Conv still reads
    the int8-rounded DequantizeLinear output: in every GLMix block the LayerNorm output
    feeds the feature Conv and, through a Transpose and a Reshape, the L2 normalisation
    and the clustering MatMul. `DedicatedQDQPair` does not help (it dedicates pairs to
    quantized consumers only) and costs 8% more time for its extra QuantizeLinear nodes.

    With `quantized_types` (the op types given to quantize_static), every node of another
    op type is float too: a residual Add whose input also feeds a quantized Conv then adds
    the float tensor, not its int8 rounding, and its DequantizeLinear goes. A quantized
    Conv's or MatMul's own output keeps its Q/DQ: that pair is the int8 kernel's output.
    """
    graph = model.graph
    producer, users = _graph_maps(graph)
    memo: dict[str, bool] = {}

    def stays_float(node: onnx.NodeProto) -> bool:
        """In `keep`; shape plumbing whose every consumer stays in float; or, with
        `quantized_types`, any other node of a type not in it."""
        if node.name not in memo:
            if node.name in keep:
                memo[node.name] = True
            elif node.op_type in _PLUMBING:
                after = users.get(node.output[0], [])
                memo[node.name] = bool(after) and all(stays_float(u) for u in after)
            else:
                memo[node.name] = quantized_types is not None and node.op_type not in quantized_types
        return memo[node.name]

    inits = {t.name for t in graph.initializer}
    rewired = 0
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not stays_float(node):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            source = producer.get(q.input[0]) if q is not None else None
            # Not a quantized kernel's output: its QuantizeLinear is what makes onnxruntime fuse
            # DQ -> Conv -> Q into one QLinearConv; reading past it puts the Conv back in float
            # (1.37x the fp32 file's time, measured).
            from_kernel = source is not None and source.op_type in (quantized_types or INTEGER_KERNEL_OPS)
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits and not from_kernel:
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


def quantized_op_counts(model: onnx.ModelProto, op_types: tuple[str, ...] = INTEGER_KERNEL_OPS) -> dict[str, int]:
    """Op type -> nodes that compute in int8: nodes of `op_types` (the ones onnxruntime has
    integer kernels for) whose two operands (data and weight, or A and B) are both
    DequantizeLinear outputs. A float Add reading dequantized tensors does not count: with
    no QuantizeLinear after it, onnxruntime runs it in float."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return dict(Counter(n.op_type for n in model.graph.node
                        if n.op_type in op_types and len(n.input) >= 2 and n.input[0] in dq and n.input[1] in dq))
