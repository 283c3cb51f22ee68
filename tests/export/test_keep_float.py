"""The block map (artifacts.onnx_blocks) and `--keep-float NAME` on the int8 converters.

`helpers.shared_tiny`, dynamic shape, at `helpers.TINY_SIZE`: the trace test_openvino,
test_residual_fold and test_bench share (the session traces it once). The map is checked
against the order PyTorch runs the blocks in; keep-float by counting the quantize nodes in
the kept block, for real in onnxruntime's quantizer and NNCF.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import onnx
import pytest
from helpers import copy_of, shared_tiny
from typer.testing import CliRunner

import glnet
from artifacts.errors import OptionError
from artifacts.metadata import ArtifactMetadata
from artifacts.onnx_blocks import BLOCK_KEY, BlockMapError, block_nodes, block_outputs, describe_blocks, fill_blocks
from artifacts.openvino_ir import read_ir_block_outputs, read_ir_metadata
from export.onnxruntime import convert_onnxruntime
from export.onnxruntime_int8 import prepare_source, quantize_onnxruntime_int8, quantize_prepared
from export.precision import PrecisionOptions, write_precision_onnx
from glnet_export.cli import app

KEPT = "stages.1.blocks.0"  # a GLMix block: Convs and MatMuls int8 would quantize
LIKE_KEPT = "stages.0.blocks.0"  # the same kind of block, not kept


@pytest.fixture(scope="module")
def tiny() -> glnet.GLNet:
    return shared_tiny()  # as test_openvino: the session traces it once


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keep_float")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_dynamic_onnx: Path, work: Path) -> Path:
    return copy_of(tiny_dynamic_onnx, work)  # `tiny` exported: dynamic shape, at `TINY_SIZE`


@pytest.fixture(scope="module")
def calib(photos: list[Path], work: Path) -> Path:
    folder = work / "calib"
    folder.mkdir()
    for p in photos[:4]:
        shutil.copy(p, folder / p.name)
    return folder


def execution_order(model: glnet.GLNet) -> list[str]:
    """The checkpoint-layout blocks of `model` in the order a forward pass calls them."""
    import torch

    names = {f"downsample_layers.{i}" for i in range(4)} | {"norm", "head"}
    names |= {n for n, _ in model.named_modules() if re.fullmatch(r"stages\.\d+\.blocks\.\d+", n)}
    called: list[str] = []
    hooks = [model.get_submodule(n).register_forward_hook(lambda *_a, n=n: called.append(n)) for n in names]
    with torch.inference_mode():
        model(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    return called


def test_block_map_covers_every_block_in_execution_order(tiny: glnet.GLNet, tiny_onnx: Path) -> None:
    proto = onnx.load(tiny_onnx)
    blocks = block_nodes(proto)
    order = execution_order(tiny)
    assert list(blocks) == order and len(order) == 11  # 4 down-samplings, 5 blocks, norm, head
    named = [n.name for n in proto.graph.node]
    assert sorted(n for nodes in blocks.values() for n in nodes) == sorted(named)  # each node in one block
    ops = {n.name: n.op_type for n in proto.graph.node}
    assert [ops[n] for n in blocks["head"]].count("Gemm") == 1
    assert sum(ops[n] == "Softmax" for n in blocks[KEPT]) == 3  # clustering, dispatching, slot attention
    outputs = block_outputs(proto)
    assert list(outputs) == order and outputs["head"] == "logits"
    made = {out: n for n in proto.graph.node for out in n.output}
    assert all(made[t].op_type == "Add" for b, t in outputs.items() if b.startswith("stages."))  # the residual sums
    # not the sizes computed from Shape that the next block also reads (dynamic shape)
    assert all(made[t].op_type == "Conv" for b, t in outputs.items() if b.startswith("downsample_layers."))


def test_the_map_survives_the_runtime_rewrites(tiny_onnx: Path, work: Path) -> None:
    """Fused LayerNorms and contrib Attention (onnxruntime target) and the fp16 converter's
    Casts are new nodes: they take their neighbours' blocks, and no block is lost."""
    order = list(block_nodes(onnx.load(tiny_onnx)))
    target = convert_onnxruntime(tiny_onnx, work / "tiny_ort.onnx").path
    fp16 = write_precision_onnx(tiny_onnx, work / "tiny.fp16.onnx", PrecisionOptions("fp16")).path
    for path in (target, fp16):
        proto = onnx.load(path)
        assert list(block_nodes(proto)) == order
        assert list(block_outputs(proto)) == order
    attention = [n for n in onnx.load(target).graph.node if n.op_type == "Attention"]
    assert attention and all(dict((p.key, p.value) for p in n.metadata_props)[BLOCK_KEY].startswith("stages.")
                             for n in attention)  # written at export: the file carries the blocks itself


def test_fill_blocks_takes_the_consumer_first_then_the_producer() -> None:
    # a -> q -> dq -> conv (block B); conv -> cast (a graph output); a belongs to A.
    order = ["a", "q", "dq", "conv", "cast"]
    consumers = {"a": ["q"], "q": ["dq"], "dq": ["conv"], "conv": ["cast"]}
    producers = {"q": ["a"], "dq": ["q"], "conv": ["dq"], "cast": ["conv"]}
    blocks = fill_blocks(order, consumers, producers, {"a": "A", "conv": "B"})
    assert blocks == {"a": "A", "q": "B", "dq": "B", "conv": "B", "cast": "B"}


def test_unknown_block_names_get_one_line_with_the_valid_names(tiny_onnx: Path, calib: Path, work: Path) -> None:
    with pytest.raises(OptionError) as info:
        quantize_onnxruntime_int8(tiny_onnx, work / "never.onnx", calib, keep_float=["stages.9.blocks.0"])
    message = str(info.value)
    assert "\n" not in message and "'stages.9.blocks.0' is not a block" in message
    assert "downsample_layers.0-3, stages.0.blocks.0, stages.1.blocks.0, stages.2.blocks.0-1" in message
    assert not (work / "never.onnx").exists()
    result = CliRunner().invoke(app, ["ort", str(tiny_onnx), "--precision", "int8", "--calib", str(calib),
                                      "--keep-float", "stages.1.blocks.7", "--no-verify"])
    assert result.exit_code == 1 and "stages.1.blocks.7" in result.output and "Traceback" not in result.output
    assert describe_blocks(["head", "stages.0.blocks.1", "stages.0.blocks.0", "norm"]) == \
        "stages.0.blocks.0-1, norm, head"
    # A source prepared without its block list cannot resolve names: the caller's mistake, said as such.
    with pytest.raises(ValueError, match=r"prepare_source\(\.\.\., blocks=True\)"):
        quantize_prepared(prepare_source(tiny_onnx), work / "never.onnx", calib, keep_float=["stages.0.blocks.0"])
    assert not (work / "never.onnx").exists()


def test_describe_blocks_collapses_only_consecutive_blocks() -> None:
    assert describe_blocks(["stages.0.blocks.2", "stages.0.blocks.0"]) == "stages.0.blocks.0, stages.0.blocks.2"
    assert describe_blocks(["stages.0.blocks.3", "stages.0.blocks.0", "stages.0.blocks.1", "head"]) == \
        "stages.0.blocks.0-1, stages.0.blocks.3, head"
    assert describe_blocks(["downsample_layers.0", "downsample_layers.2", "downsample_layers.3"]) == \
        "downsample_layers.0, downsample_layers.2-3"


def test_a_file_without_a_block_map_is_refused_in_one_line(tiny_onnx: Path, work: Path) -> None:
    proto = onnx.load(tiny_onnx)
    for node in proto.graph.node:
        del node.metadata_props[:]
    bare = work / "bare.onnx"
    onnx.save(proto, bare)
    with pytest.raises(BlockMapError, match="no block map"):
        block_nodes(onnx.load(bare), bare)
    with pytest.raises(BlockMapError, match="bare.onnx"):
        write_precision_onnx(bare, work / "bare.fp16.onnx", PrecisionOptions("fp16", keep_float=[KEPT]))
    result = CliRunner().invoke(app, ["tensorrt", str(bare), "--onnx-only", "--precision", "fp16",
                                      "--keep-float", KEPT, "--no-verify"])
    assert result.exit_code == 1 and "no block map" in result.output and "Traceback" not in result.output


def _quantize_nodes(path: Path, block: str) -> int:
    proto = onnx.load(path)
    ops = {n.name: n.op_type for n in proto.graph.node}
    return sum(ops[n] == "QuantizeLinear" for n in block_nodes(proto)[block])


def test_onnxruntime_int8_leaves_a_kept_block_unquantized(tiny_onnx: Path, calib: Path, work: Path) -> None:
    result = quantize_onnxruntime_int8(tiny_onnx, work / "tiny_int8.onnx", calib, calib_count=4, keep_float=[KEPT])
    assert _quantize_nodes(result.path, KEPT) == 0
    assert _quantize_nodes(result.path, LIKE_KEPT) > 0  # the same kind of block is quantized
    meta = ArtifactMetadata.from_props({p.key: p.value for p in onnx.load(result.path).metadata_props})
    assert meta.kept_float == (KEPT,) and meta.quantization is not None and KEPT in meta.quantization.kept_float
    proto = onnx.load(result.path)
    ops = {n.name: n.op_type for n in proto.graph.node}
    float_nodes = {n for n in block_nodes(proto)[KEPT] if ops[n] != "DequantizeLinear"}
    assert float_nodes and float_nodes <= set(result.excluded)  # the fused LayerNorms included


def test_onnxruntime_int8_names_the_user_s_blocks_and_the_budget_s_apart(tiny_onnx: Path, calib: Path,
                                                                          work: Path) -> None:
    result = quantize_onnxruntime_int8(tiny_onnx, work / "tiny_int8_budget.onnx", calib, calib_count=4,
                                       keep_float=[KEPT], budget_blocks=[LIKE_KEPT])
    assert _quantize_nodes(result.path, KEPT) == 0 and _quantize_nodes(result.path, LIKE_KEPT) == 0
    meta = ArtifactMetadata.from_props({p.key: p.value for p in onnx.load(result.path).metadata_props})
    assert meta.kept_float == (LIKE_KEPT, KEPT)  # every kept block, in network order
    assert meta.quantization is not None
    words = meta.quantization.kept_float
    assert f"blocks {KEPT} (--keep-float)" in words and f"blocks {LIKE_KEPT} (--max-drop)" in words
    assert "--keep-float, --max-drop" not in words


def test_openvino_int8_leaves_a_kept_block_unquantized(tiny_onnx: Path, calib: Path, work: Path) -> None:
    pytest.importorskip("nncf")
    ov = pytest.importorskip("openvino")
    from export.openvino import OpenVinoOptions, convert_openvino

    xml = work / "tiny_int8.xml"
    convert_openvino(tiny_onnx, xml, OpenVinoOptions(precision="int8", calib_dir=calib, calib_count=4,
                                                     keep_float=["stages.1"]))  # the whole stage: one block
    model = ov.Core().read_model(str(xml))
    meta = read_ir_metadata(model)
    assert meta is not None and meta.kept_float == (KEPT,)
    assert list(read_ir_block_outputs(model)) == list(block_nodes(onnx.load(tiny_onnx)))
    fake_quantized: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            reader = next(iter(op.output(0).get_target_inputs())).get_node().get_friendly_name()
            block = reader.split("/")[0]
            fake_quantized[block] = fake_quantized.get(block, 0) + 1
    in_block = {n: block for block, nodes in block_nodes(onnx.load(tiny_onnx)).items() for n in nodes}
    per_block: dict[str, int] = {}
    for reader, count in fake_quantized.items():
        per_block[in_block.get(reader, "?")] = per_block.get(in_block.get(reader, "?"), 0) + count
    assert per_block.get(KEPT, 0) == 0 and per_block.get(LIKE_KEPT, 0) > 0, per_block
    with pytest.raises(OptionError, match="--keep-float is for --precision int8"):
        OpenVinoOptions(precision="fp16", keep_float=[KEPT]).validate()
