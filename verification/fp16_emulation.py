"""fp16 as a GPU stores it, on a CPU: a debugging copy of an fp16 ONNX file that computes in
fp32 and rounds every tensor the file keeps in fp16 through an explicit fp16 Cast.

onnxruntime's CPU provider has fp16 kernels for few ops: it runs the others in fp32 between
Casts it inserts, and then drops the Cast pairs that meet between two such ops, so an fp16
tensor between, say, two Convs is never rounded to fp16 at all; an activation above
fp16's 65504 does not overflow there, where TensorRT's fp16 engine gives inf (seen here:
Conv -> Conv in fp16 with an intermediate of 131072 returns the fp32 result, even with
graph optimizations off). An explicit fp32 -> fp16 -> fp32 round trip is kept at every
optimization level, so this copy puts one after every node whose output the file types
as fp16: the error `debug-precision` reports is that of fp16 storage with fp32
arithmetic inside each op, which is how TensorRT's fp16 kernels accumulate.

This rewrites a temporary copy for a measurement, never a shipped file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

NOTE = ("fp16 emulated: onnxruntime's CPU provider runs most fp16 ops in fp32 and drops the rounding between "
        "them (no overflow above 65504); this run computes in fp32 and rounds every tensor the file stores in "
        "fp16, as a GPU stores it (verification.fp16_emulation)")


def has_fp16(model: onnx.ModelProto) -> bool:
    import onnx

    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) or any(
        a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for n in model.graph.node for a in n.attribute)


def _to_fp32(tensor: onnx.TensorProto) -> None:
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))


def emulate_fp16(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place as described above; returns how many tensors get a round trip."""
    import onnx
    from onnx import helper

    fp16 = onnx.TensorProto.FLOAT16
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    graph = model.graph
    for tensor in graph.initializer:
        if tensor.data_type == fp16:
            _to_fp32(tensor)
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == fp16:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    del graph.value_info[:]  # stale now; the runtime infers the types again
    nodes: list[onnx.NodeProto] = []
    rounded = 0
    for node in graph.node:
        for attr in node.attribute:  # Constant / ConstantOfShape values
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == fp16:
                _to_fp32(attr.t)
        nodes.append(node)
        for i, name in enumerate(node.output):
            if not name or types.get(name) != fp16:
                continue
            raw = f"{name}__fp32"
            node.output[i] = raw
            nodes.append(helper.make_node("Cast", [raw], [f"{name}__fp16"], name=f"{name}__to_fp16", to=fp16))
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"{name}__to_fp32",
                                          to=onnx.TensorProto.FLOAT))
            rounded += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rounded
