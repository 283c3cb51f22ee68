"""Fold GLNet's residual depthwise convolutions, h + DWConv(h), into the convolution.

glnet_4g has 60 of them: `pos_conv` (x + DW3x3(x)) and the MLP's `mlp.1` (h + DW3x3(h)).
Adding h back is the same as adding 1 to the centre tap of each channel's kernel, so the
Add node can go: DWConv'(h) with w'[c, 0, k//2, k//2] = w[c, 0, k//2, k//2] + 1. Neither
onnxruntime nor OpenVINO's CPU plugin fuses that Add by itself (its second input is the
convolution's own input); each one is a full pass over the map, the largest of the MLP's.
Folding them makes glnet_4g about 3% faster in both (README, Benchmarks), and in fp32 the
result differs only by rounding (max abs 2e-5 on logits of magnitude 35).

It is a pass for files that compute in fp32 (the onnxruntime-targeted ONNX; an OpenVINO
IR built with `--compute f32`, through `openvino_fold`), not in the portable file: in reduced
precision the identity moves from an fp32 residual add into a bf16 weight (1 + w rounds to
a step of 2^-7), and OpenVINO's bf16 error on glnet_4g grew by about 9% (mean abs 0.134 ->
0.146 on 300 photographs and crops); int8 would quantize a kernel whose centre dwarfs the rest.

Only exact matches are folded: a depthwise Conv (group = channels, weight C x 1 x k x k with
k odd, fp32) with 'same' padding, stride 1 and dilation 1, whose weight is an initializer and
whose output feeds nothing but the Add.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper, numpy_helper


def _residual_depthwise(add: onnx.NodeProto, producer: dict[str, onnx.NodeProto], uses: Counter,
                        weights: dict[str, onnx.TensorProto]) -> onnx.NodeProto | None:
    """The Conv that `add` adds to its own input, if it is a foldable one."""
    for i in (0, 1):
        conv = producer.get(add.input[i])
        if conv is None or conv.op_type != "Conv" or conv.input[0] != add.input[1 - i]:
            continue
        if uses[conv.output[0]] != 1 or conv.input[1] not in weights:
            continue
        shape = list(weights[conv.input[1]].dims)
        if len(shape) != 4 or shape[1] != 1 or shape[2] % 2 == 0 or shape[3] % 2 == 0:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        kh, kw = shape[2] // 2, shape[3] // 2
        if (attrs.get("group", 1) == shape[0]
                and list(attrs.get("pads", [0, 0, 0, 0])) == [kh, kw, kh, kw]
                and all(s == 1 for s in attrs.get("strides", [1, 1]))
                and all(d == 1 for d in attrs.get("dilations", [1, 1]))
                and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")):
            return conv
    return None


def fold_residual_depthwise(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place; returns how many Add nodes were folded away."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    producer = {out: node for node in graph.node for out in node.output}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(out.name for out in graph.output)
    names = {t.name for t in graph.initializer} | {out for node in graph.node for out in node.output}
    folded: list[onnx.NodeProto] = []
    for add in graph.node:
        if add.op_type != "Add":
            continue
        conv = _residual_depthwise(add, producer, uses, weights)
        if conv is None:
            continue
        name = conv.input[1]
        kernel = numpy_helper.to_array(weights[name]).copy()
        kernel[:, 0, kernel.shape[2] // 2, kernel.shape[3] // 2] += 1.0
        if uses[name] > 1:  # an initializer shared with another node stays as it was
            uses[name] -= 1
            copy = f"{name}.plus_identity"
            while copy in names:
                copy += "_"
            names.add(copy)
            graph.initializer.append(numpy_helper.from_array(kernel, copy))
            conv.input[1] = copy
        else:
            weights[name].CopyFrom(numpy_helper.from_array(kernel, name))
        # The Conv now produces the Add's output; its old output name goes with the Add.
        stale = conv.output[0]
        conv.output[0] = add.output[0]
        for info in list(graph.value_info):
            if info.name == stale:
                graph.value_info.remove(info)
        folded.append(add)
    for add in folded:
        graph.node.remove(add)
    return len(folded)
