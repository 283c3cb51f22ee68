"""fp16 mixed-precision and Q/DQ int8 ONNX (export.precision), run for real in onnxruntime.

These files are what TensorRT builds strongly typed engines from, so checking them in
onnxruntime on the CPU verifies most of the reduced-precision work without a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TINY_SIZE, shared_tiny
from typer.testing import CliRunner

import runtimes
from artifacts.errors import GlnetExportError, OptionError
from artifacts.photos import sample_photo_paths
from export.onnx import OnnxExportOptions, _quiet_exporter, export_onnx
from export.passes.layer_norm import fuse_channel_layer_norms
from export.precision import PrecisionOptions, sensitive_nodes, to_fp16, write_precision_onnx
from glnet.blocks import GLMixBlock
from glnet_export.cli import app
from verification.artifact import VerifyOptions, verify_artifact

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    # Perturbed weights: with a fresh init every LayerNorm is the identity affine and a
    # fusion that lost (or swapped) a norm's scale and bias would still compute the same.
    # `shared_tiny` at `TINY_SIZE` with a dynamic batch, as test_onnx_export: the session traces it once.
    net = shared_tiny()
    path = tmp_path_factory.mktemp("precision") / "glnet_tiny.onnx"
    export_onnx(net, path, OnnxExportOptions(dynamic="batch", input_size=(TINY_SIZE, TINY_SIZE)))
    return net, path


@pytest.fixture(scope="module")
def int8(tiny, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    photos = sample_photo_paths()
    assert photos, "no sample photographs: scikit-image (a dependency) is missing"
    out = tmp_path_factory.mktemp("int8") / "m.int8.onnx"
    return write_precision_onnx(tiny[1], out, PrecisionOptions("int8", calibration=photos))


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]} | {
        t.name: t.data_type for t in g.initializer}


def test_sensitive_nodes_are_the_glmix_norms_softmaxes_and_logits(tiny) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(tiny[1])
    keep = set(sensitive_nodes(model))
    ops = [n.op_type for n in model.graph.node if n.name in keep]
    # glnet_tiny has 3 GLMix blocks: each 1 logits MatMul, 2 slot softmaxes, 2 L2 normalisations.
    assert ops.count("MatMul") == 3 and ops.count("Softmax") == 6 and ops.count("ReduceL2") == 6
    all_softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(all_softmax) > 6, "the attention softmaxes are not GLMix slot softmaxes and may run in fp16"
    with_slots = set(sensitive_nodes(model, include_slot_matmuls=True))
    assert len(with_slots - keep) == 6  # clustering and dispatching MatMuls, unquantized in int8


def test_channel_layer_norms_fuse_back_into_layer_normalization(tiny) -> None:  # type: ignore[no-untyped-def]
    """The deploy form spells GLMix's channel LayerNorms out (faster in OpenVINO); the
    precision ONNX for TensorRT gets LayerNormalization nodes back, computing the same."""
    model = onnx.load(tiny[1])
    before = [n.op_type for n in model.graph.node]
    assert before.count("LayerNormalization") == 4  # the 2 grid MHSA blocks' token norms only
    assert fuse_channel_layer_norms(model) == 6  # 3 GLMix blocks x norm1, norm2
    after = [n.op_type for n in model.graph.node]
    assert after.count("LayerNormalization") == 10 and after.count("Sqrt") == 0
    assert after.count("ReduceMean") == 1  # the global average pool before the head
    onnx.checker.check_model(model, full_check=True)
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(tiny[1]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    a, b = fused.run(None, {"input": x})[0], plain.run(None, {"input": x})[0]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    assert fuse_channel_layer_norms(model) == 0  # nothing left to fuse


def test_fp16_keeps_norms_softmaxes_and_logits_matmul_in_fp32(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = write_precision_onnx(tiny[1], tmp_path / "m.fp16.onnx", PrecisionOptions("fp16"))
    model = onnx.load(result.path)
    types = _types(model)
    kept = set(result.kept_fp32)
    checked = 0
    for node in model.graph.node:
        float_io = [t for t in [*node.input, *node.output] if types.get(t) in (FLOAT, FLOAT16)]
        if node.name in kept:
            assert all(types[t] == FLOAT for t in float_io), f"{node.op_type} {node.name} is not all fp32"
            checked += 1
        elif node.op_type in ("Conv", "LayerNormalization", "Gelu", "Gemm"):
            assert all(types[t] == FLOAT16 for t in float_io), f"{node.op_type} {node.name} is not fp16"
    # 3 GLMix blocks x (logits MatMul, 2 Softmax, 2 x (ReduceL2, Clip, Div), tau Mul, and the
    # Transposes of the normalised pixel tokens and of the pooled slots) = 36
    assert checked == len(kept) == 36
    assert types[model.graph.input[0].name] == FLOAT and types[model.graph.output[0].name] == FLOAT
    # No fp32 -> fp16 -> fp32 round trip left between two fp32 nodes.
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.attribute[0].i == FLOAT:
            before = producer.get(node.input[0])
            assert not (before is not None and before.op_type == "Cast" and types[before.input[0]] == FLOAT)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["precision"] == "fp16" and props["model"] == "glnet_tiny"
    with runtimes.load(result.path) as runner:
        assert runner.precision == "fp16"


def test_int8_runs_the_float_rest_in_fp16_and_quantizes_only_int8_inputs(tiny, int8) -> None:  # type: ignore[no-untyped-def]
    """As Model Optimizer writes it for a strongly typed engine: LayerNorm, GELU, softmax and
    residual Adds in fp16, GLMix's fp32 nodes (the fp16 file's rule) in fp32, and a Q/DQ pair
    only where a Conv/MatMul/Gemm reads the tensor (no output re-quantized for its own sake)."""
    model = onnx.load(int8.path)
    types = _types(model)
    assert set(int8.kept_fp32) == set(sensitive_nodes(onnx.load(tiny[1]))) and len(int8.kept_fp32) == 36
    assert set(int8.kept_fp32) < set(int8.unquantized)  # + the clustering and dispatching MatMuls
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    kept, fp16_ops = set(int8.kept_fp32), {"LayerNormalization": 0, "Gelu": 0, "Softmax": 0, "Add": 0}
    for node in model.graph.node:
        float_io = [t for t in [*node.input, *node.output] if types.get(t) in (FLOAT, FLOAT16)]
        if node.name in kept:
            assert all(types[t] == FLOAT for t in float_io), f"{node.op_type} {node.name} is not all fp32"
        elif node.op_type in fp16_ops:
            assert all(types[t] == FLOAT16 for t in float_io), f"{node.op_type} {node.name} is not fp16"
            fp16_ops[node.op_type] += 1
        if node.op_type == "DequantizeLinear":
            assert types[node.output[0]] == FLOAT16  # fp16 scales, as the float rest
            readers = {u.op_type for u in users.get(node.output[0], [])}
            assert readers & {"Conv", "MatMul", "Gemm"}, f"{node.name} is read by {readers} only"
    assert min(fp16_ops.values()) > 0, fp16_ops
    assert types[model.graph.input[0].name] == FLOAT and types[model.graph.output[0].name] == FLOAT


def test_fp16_and_int8_onnx_match_pytorch(tiny, int8, tmp_path) -> None:  # type: ignore[no-untyped-def]
    net, source = tiny
    photos = sample_photo_paths()
    fp16 = write_precision_onnx(source, tmp_path / "m.fp16.onnx", PrecisionOptions("fp16"))
    assert int8.quantized > 50 and int8.calibration_images == len(photos)
    model = onnx.load(int8.path)
    producer = {o: n for n in model.graph.node for o in n.output}
    kept = set(int8.kept_fp32)
    for node in model.graph.node:  # no Q/DQ pair was put on the inputs of a kept node for it:
        if node.name not in kept:  # what a kept node dequantizes is the output of a quantized op
            continue               # (the quantizer's output quantization, e.g. the relation MHA's slots)
        for name in node.input:
            if name in producer and producer[name].op_type == "DequantizeLinear":
                quantize = producer[producer[name].input[0]]
                source = producer.get(quantize.input[0])
                assert source is not None and source.op_type in ("Conv", "MatMul", "Gemm"), node.name
                assert source.name not in kept and any(
                    producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in source.input)
    for result, worst_rel in ((fp16, 5e-3), (int8, 0.1)):
        report = verify_artifact(result.path, net, VerifyOptions(batch=2))
        assert report.precision == result.precision and report.passed, report.results
        assert max(r.max_rel for r in report.results) < worst_rel  # measured: fp16 7e-4, int8 2e-2


def test_precision_options_are_checked(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match="--calib"):
        write_precision_onnx(tiny[1], tmp_path / "x.onnx", PrecisionOptions("int8"))
    with pytest.raises(OptionError, match="fp32 needs no precision ONNX"):
        write_precision_onnx(tiny[1], tmp_path / "x.onnx", PrecisionOptions("fp32"))
    with pytest.raises(GlnetExportError, match="no usable images"):
        write_precision_onnx(tiny[1], tmp_path / "x.onnx", PrecisionOptions("int8", calibration=tmp_path))
    assert not (tmp_path / "x.onnx").exists()


def _lower_reduce_l2(model: onnx.ModelProto) -> onnx.ModelProto:
    """ReduceL2 -> ReduceSumSquare + Sqrt, as TensorRT's ONNX parser imports it: the sum of
    squares is a tensor of the input's type."""
    nodes = []
    for n in model.graph.node:
        if n.op_type != "ReduceL2":
            nodes.append(n)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        nodes.append(onnx.helper.make_node("ReduceSumSquare", list(n.input), [n.output[0] + "_sumsq"], n.name,
                                           **attrs))
        nodes.append(onnx.helper.make_node("Sqrt", [n.output[0] + "_sumsq"], list(n.output), n.name + "_sqrt"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def test_fp16_l2_norm_overflows_unless_kept_in_fp32() -> None:
    """Why the norms stay fp32: the initial slots are pooled from the un-normalised residual
    stream, and a slot whose sum of squares passes 65504 gets an infinite fp16 norm, so its
    normalised query is 0 and its soft clustering turns uniform."""
    torch.manual_seed(0)
    block = GLMixBlock(32, 2, 2, pos_conv=False, mlp_dwconv=False, layerscale=0.0).eval()
    block.deploy = True
    with torch.no_grad():
        block.slot_scale.fill_(10.0)  # a trained-like temperature: sharp assignments, so they matter
    with _quiet_exporter():
        program = torch.onnx.export(block, (torch.randn(1, 32, 16, 16),), None, input_names=["x"], output_names=["y"],
                                    opset_version=20, dynamo=True)
    assert program is not None
    lowered = program.model_proto
    assert fuse_channel_layer_norms(lowered) == 2  # as write_precision_onnx does
    lowered = _lower_reduce_l2(lowered)
    keep = sensitive_nodes(lowered) + [n.name for n in lowered.graph.node if n.name.endswith("_sqrt")]
    naive, mixed = to_fp16(lowered, []), to_fp16(lowered, keep)
    # onnxruntime's CPU runs fp16 ops that have no fp16 kernel in fp32 and skips the cast in
    # between when nobody reads the tensor; making the sums of squares graph outputs makes
    # them hold their declared type, as in a strongly typed TensorRT engine.
    for model in (naive, mixed):
        model.graph.output.extend(onnx.ValueInfoProto(name=n.output[0]) for n in model.graph.node
                                  if n.op_type == "ReduceSumSquare")
    # Large, spatially smooth activations (|x| < 256, so each square still fits fp16).
    x = torch.nn.functional.interpolate(torch.randn(1, 32, 8, 8) * 60, scale_factor=2)
    x = x + 0.5 * torch.randn(1, 32, 16, 16)
    slots = torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(2)
    assert float((slots**2).sum(1).max()) > 65504 and float(x.abs().max()) < 256
    with torch.no_grad():
        update = (block(x) - x).numpy()  # the block's residual update, whose GLMix part is at stake
    errors = {}
    for name, model in (("naive", naive), ("mixed", mixed)):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        y, *sums = session.run(None, {"x": x.numpy()})
        errors[name] = float(np.abs((y - x.numpy()) - update).max() / np.abs(update).max())
        assert np.isinf(np.concatenate([s.ravel() for s in sums])).any() == (name == "naive")
    assert errors["naive"] > 0.05, errors  # measured 0.19: the slots collapse to a uniform assignment
    assert errors["mixed"] < 5e-3, errors  # measured 5e-4


def test_cli_onnx_only_writes_and_verifies(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cli.fp16.onnx"
    result = CliRunner().invoke(app, ["tensorrt", str(tiny[1]), "--precision", "fp16", "--onnx-only", "-o", str(out),
                                      "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["engine"] is None and report["precision_onnx"]["precision"] == "fp16"
    assert report["verification"]["passed"] and out.is_file()
    result = CliRunner().invoke(app, ["tensorrt", str(tiny[1]), "--onnx-only"])
    assert result.exit_code == 1 and "fp16 or int8" in result.output
