"""`debug-precision`: the block that loses precision, found in a planted fault and fixed by --keep-float.

The fault: one GLMix block's first feature convolution is scaled up by 2**17 and the
depthwise convolution after it down by as much. In fp32 that is exact (a power of two),
so the model computes what it did; in fp16 that convolution's outputs pass 65504 and
overflow. The debugger must name exactly that block, and keeping it fp32 must remove the
error. `helpers.shared_tiny`, dynamic shape, at `helpers.TINY_SIZE`: the session's shared trace.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import copy_of, shared_tiny
from helpers_trained import TrainedDigits
from onnx import numpy_helper
from typer.testing import CliRunner

import glnet
from export.precision import PrecisionOptions, write_precision_onnx
from glnet_export.cli import app
from verification.metrics import tolerance_for
from verification.precision_debug import DebugOptions, PrecisionDebugError, debug_precision, judge

FAULTY = "stages.1.blocks.0"
SCALE = 2.0**17  # exact in fp32; 1.8 x 2**17 > 65504 in fp16


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("precision_debug")


def plant_fault(model: glnet.GLNet, onnx_path: Path) -> glnet.GLNet:
    """A copy of `model` with FAULTY's first feature convolution scaled up by SCALE and the
    depthwise one after it down by as much; the ONNX export of `model` at `onnx_path` gets
    its initializers scaled the same way, in place."""
    faulty = copy.deepcopy(model)
    convs = faulty.get_submodule(FAULTY).feature_conv
    factors = {f"{FAULTY}.feature_conv.0.weight": SCALE, f"{FAULTY}.feature_conv.0.bias": SCALE,
               f"{FAULTY}.feature_conv.1.weight": 1 / SCALE}
    with torch.no_grad():
        convs[0].weight *= SCALE
        convs[0].bias *= SCALE
        convs[1].weight /= SCALE
    proto = onnx.load(onnx_path)
    scaled = []
    for init in proto.graph.initializer:
        if init.name in factors:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factors[init.name]),
                                                  init.name))
            scaled.append(init.name)
    assert sorted(scaled) == sorted(factors), "the export no longer keeps these weights as initializers"
    onnx.save(proto, onnx_path)
    return faulty


@pytest.fixture(scope="module")
def planted(tiny_dynamic_onnx: Path, work: Path) -> tuple[glnet.GLNet, Path]:
    """The faulty model and its portable ONNX (the export's initializers scaled the same way)."""
    path = copy_of(tiny_dynamic_onnx, work)  # `shared_tiny` exported
    return plant_fault(shared_tiny(), path), path


@pytest.fixture(scope="module")
def photos3(photos: list[Path]) -> list[Path]:
    return photos[:3]


def test_the_fault_leaves_fp32_unchanged(planted: tuple[glnet.GLNet, Path]) -> None:
    import onnxruntime as ort

    faulty, path = planted
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.inference_mode():
        clean = shared_tiny()(torch.from_numpy(x)).numpy()
        ours = faulty(torch.from_numpy(x)).numpy()
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(ours - clean).max() <= 1e-5 * np.abs(clean).max()
    assert np.abs(onnx_out - clean).max() <= 1e-4 * np.abs(clean).max()


def test_debugger_names_the_planted_block_and_plots_it(planted: tuple[glnet.GLNet, Path], photos3: list[Path],
                                                      work: Path) -> None:
    faulty, path = planted
    fp16 = write_precision_onnx(path, work / "tiny.fp16.onnx", PrecisionOptions("fp16")).path
    checkpoint = work / "faulty.pth"
    torch.save(faulty.state_dict(), checkpoint)
    args = ["debug-precision", str(fp16), "--checkpoint", str(checkpoint), "--json", "-",
            "--plot", str(work / "blocks.png")] + [f"--images={p}" for p in photos3]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["first_jump"] == FAULTY and report["precision"] == "fp16"
    rows = {r["block"]: r for r in report["blocks"]}
    assert list(rows)[:4] == ["downsample_layers.0", "stages.0.blocks.0", "downsample_layers.1", FAULTY]
    assert not any(rows[b]["jumps"] for b in list(rows)[:3])  # before the fault, fp16's ordinary error
    assert rows["stages.0.blocks.0"]["max_rel"] < tolerance_for("fp16").max_rel
    # fp16 overflows (inf) in that block: JSON has no infinity, so null; the stage's output is that block's
    assert rows[FAULTY]["max_rel"] is None and rows[FAULTY]["growth"] is None and report["stages"]["stages.1"] is None
    assert "fp16 emulated" in " ".join(report["notes"])
    assert (work / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_keep_float_of_that_block_fixes_the_fp16_error(planted: tuple[glnet.GLNet, Path], photos3: list[Path],
                                                       work: Path) -> None:
    faulty, path = planted
    fixed = write_precision_onnx(path, work / "tiny.kept.fp16.onnx",
                                 PrecisionOptions("fp16", keep_float=[FAULTY])).path
    report = debug_precision(fixed, faulty, DebugOptions(images=photos3))
    assert report.kept_float == (FAULTY,) and report.first_jump is None
    head = report.blocks[-1]
    assert head.block == "head" and head.max_rel < tolerance_for("fp16").max_rel
    kept = next(b for b in report.blocks if b.block == FAULTY)
    assert math.isfinite(kept.max_rel) and not kept.jumps


def test_on_the_trained_digits_model_the_planted_block_is_named_and_keeping_it_fixes_the_error(
        digits: TrainedDigits, digits_onnx: Path, tmp_path: Path) -> None:
    """The same fault in a model that has learned something: named on held-out digits, and
    the fp16 file with that block kept in float is back within fp16's tolerance."""
    path = copy_of(digits_onnx, tmp_path)
    faulty = plant_fault(digits.model, path)
    images = digits.write_pngs(tmp_path / "eval", "eval")[:20]
    fp16 = write_precision_onnx(path, tmp_path / "digits.fp16.onnx", PrecisionOptions("fp16")).path
    report = debug_precision(fp16, faulty, DebugOptions(images=images))
    assert report.first_jump == FAULTY
    kept = write_precision_onnx(path, tmp_path / "digits.kept.fp16.onnx",
                                PrecisionOptions("fp16", keep_float=[FAULTY])).path
    fixed = debug_precision(kept, faulty, DebugOptions(images=images))
    assert fixed.first_jump is None and fixed.blocks[-1].max_rel < tolerance_for("fp16").max_rel


def test_openvino_reports_the_precision_that_ran(planted: tuple[glnet.GLNet, Path], photos3: list[Path],
                                                 work: Path) -> None:
    """An fp32 IR asked for bf16: bf16 where the CPU has it, else f32 and a note saying so."""
    ov = pytest.importorskip("openvino")
    from export.openvino import OpenVinoOptions, convert_openvino

    faulty, path = planted
    xml = convert_openvino(path, work / "tiny.xml", OpenVinoOptions(precision="fp32")).xml
    report = debug_precision(xml, faulty, DebugOptions(images=photos3, precision="bf16"))
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert report.requested_precision == "bf16"
    assert report.precision == ("bf16" if has_bf16 else "fp32")
    assert any("no bf16 support here" in n for n in report.notes) != has_bf16
    assert [b.block for b in report.blocks][3] == FAULTY and report.blocks[-1].block == "head"


def test_judge_names_the_first_block_whose_error_jumps() -> None:
    def row(name: str, error: float) -> tuple[str, str, tuple[int, ...], dict[str, float]]:
        return name, name, (1,), {"max_rel": error, "max_abs": error, "cosine": 1.0}

    floor = 1e-3
    rows, first, largest = judge([row("a", 5e-4), row("b", 2e-3), row("c", 3e-2), row("d", 4e-2),
                                  row("e", 5e-1)], floor, 10)
    # a starts from the floor; c grows 15x from b; e grows 12.5x, but c came first.
    assert [r.jumps for r in rows] == [False, False, True, False, True]
    assert first == "c" and largest == "c"
    rows, first, _ = judge([row("a", 1e-3), row("b", math.inf), row("c", math.inf)], floor, 10)
    assert first == "b" and [r.jumps for r in rows] == [False, True, False]  # already broken: c is no new jump
    _, first, largest = judge([row("a", 1e-3), row("b", 2e-3)], floor, 10)
    assert first is None and largest == "b"


def test_bad_artifacts_are_refused_in_one_line(planted: tuple[glnet.GLNet, Path], work: Path) -> None:
    faulty, path = planted
    engine = work / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(PrecisionDebugError, match="--onnx-only"):
        debug_precision(engine, faulty)
    with pytest.raises(Exception, match="--precision is for OpenVINO IRs"):
        debug_precision(path, faulty, DebugOptions(precision="bf16"))
    proto = onnx.load(path)
    for node in proto.graph.node:
        del node.metadata_props[:]
    bare = work / "bare.onnx"
    onnx.save(proto, bare)
    checkpoint = work / "clean.pth"
    torch.save(faulty.state_dict(), checkpoint)
    result = CliRunner().invoke(app, ["debug-precision", str(bare), "-c", str(checkpoint)])
    assert result.exit_code == 1 and "no block map" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["debug-precision", str(path), "-c", str(checkpoint), "--ratio", "1"])
    assert result.exit_code == 1 and "--ratio must be above 1" in result.output
