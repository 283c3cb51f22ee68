"""Turn the deploy form's spelled-out channel LayerNorms back into LayerNormalization nodes.

The deploy form normalises GLMix's NCHW maps over the channel axis with plain ops
(ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Div, then the affine Mul and Add:
`glnet.layers.LayerNorm2d.in_place_layout`), because OpenVINO runs that without the two
transposes a LayerNormalization node needs and is about 10% faster for it. TensorRT is
better served by the fused node: it has a normalization kernel that accumulates in fp32
whatever the tensor type, whereas the spelled-out variance of an fp16 graph overflows as
soon as a deviation passes 256, and onnxruntime's int8 quantizer would put Q/DQ pairs
around the elementwise Mul and Add. So the precision ONNX for TensorRT (`export.precision`)
first rewrites each match as Transpose -> LayerNormalization(axis -1) -> Transpose, which is
exactly the graph the deploy form produced before. The onnxruntime-targeted file gets the
same rewrite (`export.passes`): onnxruntime's reductions over axis 1 of an NCHW map are
slower than the fused node with its two transposes (about 4% of glnet_4g's latency).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _axes(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[int] | None:
    """The axes of a ReduceMean (an attribute before opset 18, an input since)."""
    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    if len(node.input) > 1:
        value = _constant(graph, node.input[1])
        return None if value is None else [int(v) for v in value.ravel()]
    return None


def _affine(graph: onnx.GraphProto, node: onnx.NodeProto, data: str) -> np.ndarray | None:
    """The per-channel constant (C x 1 x 1) that `node` multiplies or adds to `data`, as (C,)."""
    other = [name for name in node.input if name != data]
    value = _constant(graph, other[0]) if len(other) == 1 else None
    if value is None or value.ndim != 3 or value.shape[1:] != (1, 1):
        return None
    return value.reshape(-1)


def _channels(graph: onnx.GraphProto, name: str, *affine: np.ndarray | None) -> int | None:
    for value in affine:
        if value is not None:
            return int(value.size)
    for info in graph.value_info:
        if info.name == name and len(info.type.tensor_type.shape.dim) == 4:
            dim = info.type.tensor_type.shape.dim[1]
            return int(dim.dim_value) if dim.HasField("dim_value") else None
    return None


def fuse_channel_layer_norms(model: onnx.ModelProto) -> int:
    """Rewrite every spelled-out LayerNorm over axis 1 of a 4-D map in place; returns how many."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def made_by(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_user(name: str, op_type: str) -> onnx.NodeProto | None:
        found = users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    if any(not node.name for node in graph.node):
        return 0  # nodes are told apart by name (the exporter names every one)
    replaced: dict[str, list[onnx.NodeProto]] = {}  # the affine Add's name -> the new nodes
    dropped: set[str] = set()
    for div in graph.node:
        if div.op_type != "Div":
            continue
        sqrt = made_by(div.input[1], "Sqrt")
        add_eps = sqrt and made_by(sqrt.input[0], "Add")
        var = add_eps and made_by(add_eps.input[0], "ReduceMean")
        square = var and made_by(var.input[0], "Mul")
        sub = made_by(div.input[0], "Sub")
        mean = sub and made_by(sub.input[1], "ReduceMean")
        if not (sqrt and add_eps and var and square and sub and mean):
            continue
        if list(square.input) != [sub.output[0]] * 2 or mean.input[0] != sub.input[0]:
            continue
        if _axes(graph, mean) != [1] or _axes(graph, var) != [1]:
            continue
        eps = _constant(graph, add_eps.input[1])
        if eps is None or eps.size != 1:
            continue
        # The affine Mul and Add are absent where they were identities (onnxsim drops a
        # multiplication by ones and an addition of zeros, as in an untrained model).
        end, weight, bias, matched = div, None, None, [mean, sub, square, var, add_eps, sqrt, div]
        scale = only_user(end.output[0], "Mul")
        if scale is not None and (weight := _affine(graph, scale, end.output[0])) is not None:
            end = scale
            matched.append(scale)
        shift = only_user(end.output[0], "Add")
        if shift is not None and (bias := _affine(graph, shift, end.output[0])) is not None:
            end = shift
            matched.append(shift)
        channels = _channels(graph, div.output[0], weight, bias)
        if channels is None:
            continue
        weight = np.ones(channels, np.float32) if weight is None else weight
        bias = np.zeros(channels, np.float32) if bias is None else bias
        name = div.name
        w_name, b_name = f"{name}_ln_scale", f"{name}_ln_bias"
        graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), w_name),
                                  numpy_helper.from_array(bias.astype(np.float32), b_name)])
        nhwc, normed = f"{name}_nhwc", f"{name}_ln"
        replaced[end.name] = [
            helper.make_node("Transpose", [sub.input[0]], [nhwc], f"{name}_to_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("LayerNormalization", [nhwc, w_name, b_name], [normed], f"{name}_layer_norm",
                             axis=-1, epsilon=float(eps.ravel()[0])),
            helper.make_node("Transpose", [normed], list(end.output), f"{name}_to_nchw", perm=[0, 3, 1, 2]),
        ]
        dropped |= {n.name for n in matched}
    if not replaced:
        return 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in replaced:
            nodes += replaced[node.name]
        elif node.name not in dropped:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    return len(replaced)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
