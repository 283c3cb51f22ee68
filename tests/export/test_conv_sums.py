"""Regrouping x + (y + conv) for onnxruntime: exact matches only, same sums, fewer reorders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.passes.conv_sums import regroup_conv_sums

C = 16  # onnxruntime's NCHWc convolutions need channel counts in whole blocks (8 or 16)


def _graph(inner_feeds_output: bool = False, other_is_conv: bool = False, late_x: bool = False) -> onnx.ModelProto:
    """GLMix's tail in miniature: out = x + (y + local), x and local convolution outputs.

    y is the input transposed from NHWC, as the dispatched map is; with `other_is_conv` it is
    a third convolution output instead, and with `late_x` x's convolution comes after the
    inner Add in the node list.
    """
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((C, C, 1, 1)).astype(np.float32) / 4, f"w{i}")
             for i in range(3)]
    conv_x = helper.make_node("Conv", ["a", "w0"], ["x"])
    nodes = [] if late_x else [conv_x]
    nodes.append(helper.make_node("Conv", ["a", "w1"], ["local"]))
    if other_is_conv:
        nodes.append(helper.make_node("Conv", ["a", "w2"], ["y"]))
    else:
        nodes.append(helper.make_node("Transpose", ["b"], ["y"], perm=[0, 3, 1, 2]))
    nodes.append(helper.make_node("Add", ["y", "local"], ["inner"]))
    if late_x:
        nodes.append(conv_x)
    nodes.append(helper.make_node("Add", ["x", "inner"], ["out"]))
    nodes.append(helper.make_node("Conv", ["out", "w2"], ["next"]))  # the next block reads the sum
    outputs = [helper.make_tensor_value_info("next", TensorProto.FLOAT, [1, C, 12, 12])]
    if inner_feeds_output:
        outputs.append(helper.make_tensor_value_info("inner", TensorProto.FLOAT, [1, C, 12, 12]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, C, 12, 12]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 12, 12, C])],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: onnx.ModelProto, optimized: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(optimized)
    opts.log_severity_level = 3  # the NCHWc warning about saving hardware-specific graphs
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, 1),
    ({"inner_feeds_output": True}, 0),  # the partial sum is used elsewhere: it must stay
    ({"other_is_conv": True}, 0),  # three convolution outputs: nothing to gain
    ({"late_x": True}, 0),  # regrouping would read x before it is computed
])
def test_regrouped_sum_is_the_same_and_needs_fewer_reorders(kwargs: dict, expected: int, tmp_path: Path) -> None:
    model = _graph(**kwargs)
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((1, C, 12, 12)).astype(np.float32),
             "b": rng.standard_normal((1, 12, 12, C)).astype(np.float32)}
    regrouped = onnx.ModelProto()
    regrouped.CopyFrom(model)
    assert regroup_conv_sums(regrouped) == expected
    onnx.checker.check_model(regrouped, full_check=True)
    before = _session(model, tmp_path / "before.onnx").run(None, feeds)
    after = _session(regrouped, tmp_path / "after.onnx").run(None, feeds)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    if expected:
        # What it is for: in the session's graph the two convolution outputs are summed
        # inside the second convolution, so one Add and one reorder back to NCHW go.
        ops = [Counter(n.op_type for n in onnx.load(tmp_path / f"{name}.onnx").graph.node)
               for name in ("before", "after")]
        assert ops[1]["Add"] == ops[0]["Add"] - 1
        assert ops[1]["ReorderOutput"] == ops[0]["ReorderOutput"] - 1
    assert regroup_conv_sums(regrouped) == 0, "regrouping twice changes nothing more"
