"""`export.passes.residual_fold` for an OpenVINO model: h + DWConv(h) -> DWConv'(h), for f32 runs.

The ONNX Conv of a depthwise convolution arrives in OpenVINO as GroupConvolution(h, W) with
W a G x 1 x 1 x k x k Constant, then Add(bias); the residual is one more Add with h. The CPU
plugin does not fuse that last Add (h is the convolution's own input), so it costs a pass
over the map; folding it into W's centre tap makes glnet_4g about 3% faster in f32. The
runner applies it only when the model computes in f32 (see `residual_fold` for why not in
bf16, fp16 or int8), on its in-memory model; the IR on disk is untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _single_user(output: Any) -> bool:
    """One consumer of the value; ShapeOf nodes (read_model of a dynamic ONNX) read only its shape."""
    users = [t.get_node().get_type_name() for t in output.get_target_inputs()]
    return len([u for u in users if u != "ShapeOf"]) == 1


def _depthwise_kernel(conv: Any) -> np.ndarray | None:
    """A copy of the f32 kernel (G x 1 x 1 x k x k) of a foldable depthwise GroupConvolution."""
    if conv.get_type_name() != "GroupConvolution":
        return None
    weight = conv.input_value(1).get_node()
    if weight.get_type_name() == "Reshape":  # an IR from ov.convert_model folds it; read_model of an ONNX does not
        weight = weight.input_value(0).get_node()
    if weight.get_type_name() != "Constant" or weight.get_element_type().get_type_name() != "f32":
        return None
    shape = list(conv.get_input_shape(1))
    if len(shape) != 5 or shape[1:3] != [1, 1] or shape[3] % 2 == 0 or shape[4] % 2 == 0:
        return None
    attrs = conv.get_attributes()
    half = [shape[3] // 2, shape[4] // 2]
    if (list(attrs["strides"]) != [1, 1] or list(attrs["dilations"]) != [1, 1] or attrs["auto_pad"] != "explicit"
            or list(attrs["pads_begin"]) != half or list(attrs["pads_end"]) != half):
        return None
    return np.array(weight.get_data(), dtype=np.float32).reshape(shape)  # a copy: the Constant may be shared


def fold_residual_depthwise_ov(model: Any) -> int:
    """Rewrite the ov.Model in place; returns how many residual Adds were folded away."""
    from openvino import opset13 as ops

    folded = 0
    for add in model.get_ordered_ops():
        if add.get_type_name() != "Add":
            continue
        for i in (0, 1):
            branch = add.input_value(i)  # the convolution, with or without its bias Add
            conv = branch.get_node()
            if conv.get_type_name() == "Add" and _single_user(branch):
                conv_out = conv.input_value(0)
                conv = conv_out.get_node()
                if conv.get_type_name() != "GroupConvolution" or not _single_user(conv_out):
                    continue
            elif not _single_user(branch):
                continue
            kernel = _depthwise_kernel(conv)
            if kernel is None or conv.input_value(0) != add.input_value(1 - i):  # Outputs compare by node and port
                continue
            kernel[:, 0, 0, kernel.shape[3] // 2, kernel.shape[4] // 2] += 1.0
            conv.input(1).replace_source_output(ops.constant(kernel).output(0))
            add.output(0).replace(branch)
            folded += 1
            break
    return folded
