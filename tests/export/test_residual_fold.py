"""Folding h + DWConv(h) into the convolution: exact matches only, same outputs, fewer nodes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import copy_of, shared_tiny
from onnx import TensorProto, helper, numpy_helper

from export.onnxruntime import convert_onnxruntime
from export.openvino import OpenVinoOptions, convert_openvino
from export.passes.openvino_fold import fold_residual_depthwise_ov
from export.passes.residual_fold import fold_residual_depthwise
from glnet.layers import ResidualDWConv
from runtimes.openvino import OpenVinoRunner

C = 4


def _graph(convs: list[tuple[str, dict, tuple[int, ...]]], extra_use: bool = False) -> onnx.ModelProto:
    """x -> for each (weight name, Conv attributes, kernel shape): x = x + Conv(x) -> y."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "x"
    for i, (weight, attrs, kernel) in enumerate(convs):
        if weight not in {t.name for t in inits}:
            inits.append(numpy_helper.from_array(rng.standard_normal(kernel).astype(np.float32), weight))
        nodes.append(helper.make_node("Conv", [x, weight], [f"c{i}"], **attrs))
        nodes.append(helper.make_node("Add", [x, f"c{i}"] if i % 2 else [f"c{i}", x], [f"s{i}"]))
        x = f"s{i}"
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, C, 9, 9])]
    if extra_use:  # the first Conv's output is also a graph output: its Add must stay
        outputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, C, 9, 9]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 9, 9])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


DW3 = {"group": C, "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
DW5 = {"group": C, "pads": [2, 2, 2, 2]}


CASES = pytest.mark.parametrize(("convs", "extra_use", "expected"), [
    ([("w0", DW3, (C, 1, 3, 3)), ("w1", DW5, (C, 1, 5, 5))], False, 2),
    ([("w0", DW3, (C, 1, 3, 3)), ("w0", DW3, (C, 1, 3, 3))], False, 2),  # a shared weight gets a copy
    ([("w0", DW3, (C, 1, 3, 3))], True, 0),  # the Conv's output is used elsewhere
    ([("w0", {"pads": [1, 1, 1, 1]}, (C, C, 3, 3))], False, 0),  # a full conv, not depthwise
    ([("w0", {**DW3, "dilations": [2, 2], "pads": [2, 2, 2, 2]}, (C, 1, 3, 3))], False, 0),
    ([("w0", {"group": C, "pads": [0, 0, 0, 0]}, (C, 1, 1, 1))], False, 1),  # 1x1 depthwise: a scale
])


@CASES
def test_only_exact_matches_fold_and_outputs_stay_the_same(convs: list, extra_use: bool, expected: int) -> None:
    model = _graph(convs, extra_use)
    x = np.random.default_rng(1).standard_normal((1, C, 9, 9)).astype(np.float32)
    before = _run(model, x)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_residual_depthwise(folded) == expected
    onnx.checker.check_model(folded, full_check=True)
    ops = Counter(n.op_type for n in folded.graph.node)
    assert ops["Add"] == len(convs) - expected and ops["Conv"] == len(convs)
    for a, b in zip(before, _run(folded, x), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    assert fold_residual_depthwise(folded) == 0, "folding twice changes nothing more"


def test_the_portable_file_keeps_its_residual_adds_and_the_onnxruntime_file_folds_them(tiny_dynamic_onnx: Path,
                                                                                       tmp_path: Path) -> None:
    model = shared_tiny()
    residual = sum(1 for name, module in model.named_modules()
                   if isinstance(module, ResidualDWConv) or (name.endswith("pos_conv") and module is not None))
    assert residual == 10
    portable, targeted = copy_of(tiny_dynamic_onnx, tmp_path), tmp_path / "tiny_ort.onnx"  # `model`, exported
    # The `ort` command's rewrite of the portable file: the same passes as `onnx --target
    # onnxruntime` (test_onnxruntime_target holds the two to the same graph), one export cheaper.
    result = convert_onnxruntime(portable, targeted)
    assert fold_residual_depthwise(onnx.load(portable)) == residual, "the portable file is not folded (bf16 reads it)"
    assert result.passes.counts["residual_fold"] == residual
    assert fold_residual_depthwise(onnx.load(targeted)) == 0, "the onnxruntime file is folded on disk"
    x = np.random.default_rng(2).standard_normal((2, 3, 96, 64)).astype(np.float32)
    plain, folded = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (portable, targeted))
    a, b = plain.run(None, {"input": x})[0], folded.run(None, {"input": x})[0]
    assert float(np.abs(a - b).max() / np.abs(a).max()) < 1e-5


@CASES
def test_openvino_folds_the_same_matches(convs: list, extra_use: bool, expected: int, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    path = tmp_path / "g.onnx"
    onnx.save(_graph(convs, extra_use), path)
    core = ov.Core()
    x = np.random.default_rng(1).standard_normal((1, C, 9, 9)).astype(np.float32)
    before = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)
    model = core.read_model(path)
    assert fold_residual_depthwise_ov(model) == expected
    assert fold_residual_depthwise_ov(model) == 0
    after = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)
    for i in range(len(before)):
        np.testing.assert_allclose(after[i], before[i], rtol=1e-5, atol=1e-5)


def test_openvino_ir_built_for_f32_is_folded_and_asks_for_f32(tiny_dynamic_onnx: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    path = copy_of(tiny_dynamic_onnx, tmp_path)  # glnet_tiny seed 3
    auto = convert_openvino(path, tmp_path / "tiny.xml", OpenVinoOptions(precision="fp32"))
    f32 = convert_openvino(path, tmp_path / "tiny_f32.xml", OpenVinoOptions(precision="fp32", compute="f32"))
    assert auto.passes == {} and auto.metadata.compute_precision == ""
    assert f32.passes == {"residual_fold": 10} and f32.metadata.compute_precision == "f32"
    assert f32.nodes < auto.nodes, "the folded Adds are gone from the IR on disk"
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with (OpenVinoRunner(auto.xml, threads=2, precision="fp32") as plain,
          OpenVinoRunner(f32.xml, threads=2) as folded):  # no precision asked: the file says f32
        assert folded.requested_precision == "f32" and folded.float_precision == "fp32"
        a, b = plain.infer(x), folded.infer(x)
    assert float(np.abs(a - b).max() / np.abs(a).max()) < 1e-5
    with OpenVinoRunner(auto.xml, threads=2) as default:
        assert default.requested_precision is None, "an IR for the device's own choice asks for nothing"
