"""The onnxruntime-targeted file: rewritten at export, run by a bare InferenceSession.

What a user ships to onnxruntime is this file, loaded with onnxruntime's own API and no
code of ours; so these tests load it that way and compare it with PyTorch at several
batches and resolutions, on real photographs and random inputs. Other back-ends refuse it
with one line.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import TINY_SIZE, shared_tiny
from typer.testing import CliRunner

import glnet
from artifacts.errors import ArtifactLoadError, ExportError, OptionError
from artifacts.metadata import ArtifactMetadata
from artifacts.photos import sample_photo_paths
from artifacts.preprocess import preprocess
from export.onnx import OnnxExportOptions, export_onnx
from export.onnxruntime import convert_onnxruntime, default_output
from export.passes import ONNX_PASSES, ONNXRUNTIME_REQUIRES
from export.passes.attention import fuse_attention
from glnet.testing import seeded_model
from glnet_export.cli import app

# glnet_tiny: 3 GLMix blocks (a relation MHA each) + 2 grid MHSA blocks; 5 pos_conv + 5
# MLP residual depthwise convolutions; 2 channel LayerNorms and one residual sum per GLMix.
EXPECTED_PASSES = {"attention": 5, "residual_fold": 10, "layer_norm": 6, "conv_sums": 3}


def _tiny_with_attention_biases() -> glnet.GLNet:
    """glnet_tiny, seeded, with non-zero attention biases: the fused node must carry them."""
    model = seeded_model("glnet_tiny", seed=11)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("in_proj_bias", "out_proj.bias")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("ort_target")
    model = _tiny_with_attention_biases()
    portable = folder / "tiny.onnx"
    export_onnx(model, portable, OnnxExportOptions(dynamic="shape", input_size=(96, 96)))
    targeted = folder / "tiny_ort.onnx"
    result = export_onnx(model, targeted, OnnxExportOptions(dynamic="shape", input_size=(96, 96),
                                                            target="onnxruntime"))
    return {"model": model, "portable": portable, "targeted": targeted, "result": result, "folder": folder}


def _bare_session(path: Path) -> ort.InferenceSession:
    """What an app writes: no glnet-export code between the file and onnxruntime."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _photo_batch(n: int, size: tuple[int, int]) -> np.ndarray:
    meta = ArtifactMetadata(model="glnet_tiny", num_classes=1000, input_size=size)
    paths = sample_photo_paths()
    assert paths, "the sample photographs are part of the dev install"
    return np.concatenate([preprocess(paths[i % len(paths)], meta) for i in range(n)])


@pytest.mark.parametrize("shape", [(1, 96, 96), (4, 96, 96), (2, 128, 160), (3, 97, 131)])
def test_bare_session_matches_pytorch(files: dict, shape: tuple[int, int, int]) -> None:
    batch, h, w = shape
    session = _bare_session(files["targeted"])
    rng = np.random.default_rng(batch * h)
    for x in (_photo_batch(batch, (h, w)), rng.standard_normal((batch, 3, h, w), dtype=np.float32)):
        got = session.run(None, {"input": x})[0]
        with torch.inference_mode():
            want = files["model"](torch.from_numpy(x)).numpy()
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel < 1e-4, f"{shape}: max rel {rel:.2e}"
        assert (got.argmax(1) == want.argmax(1)).all()


def test_the_file_carries_the_rewrites_and_says_what_it_needs(files: dict) -> None:
    result = files["result"]
    assert result.passes.counts == EXPECTED_PASSES
    proto = onnx.load(files["targeted"])
    ops = Counter(n.op_type for n in proto.graph.node)
    before = Counter(n.op_type for n in onnx.load(files["portable"]).graph.node)
    assert ops["Attention"] == 5 and before["Attention"] == 0
    assert ops["LayerNormalization"] == before["LayerNormalization"] + 6, "the GLMix channel LayerNorms are fused"
    assert any(o.domain == "com.microsoft" for o in proto.opset_import)
    # The metadata as any onnxruntime app reads it.
    props = _bare_session(files["targeted"]).get_modelmeta().custom_metadata_map
    meta = ArtifactMetadata.from_props(props)
    assert meta.target == "onnxruntime" and meta.runtime_only == "onnxruntime"
    assert meta.requires == ONNXRUNTIME_REQUIRES
    assert meta.contrib_ops == ("com.microsoft.Attention",)
    assert meta.graph_passes == EXPECTED_PASSES
    portable = ArtifactMetadata.from_props({p.key: p.value for p in onnx.load(files["portable"]).metadata_props})
    assert portable.target == "portable" and portable.runtime_only is None and portable.contrib_ops == ()
    assert not any(n.domain for n in onnx.load(files["portable"]).graph.node), "the portable file is standard ONNX"


def test_converting_a_portable_file_gives_the_same_graph(files: dict, tmp_path: Path) -> None:
    converted = convert_onnxruntime(files["portable"], tmp_path / "converted.onnx")
    assert converted.passes.counts == EXPECTED_PASSES
    assert converted.nodes_after < converted.nodes_before
    a, b = onnx.load(converted.path), onnx.load(files["targeted"])
    assert Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)
    assert default_output(Path("x/glnet_4g.onnx")) == Path("x/glnet_4g_ort.onnx")


def test_a_targeted_file_is_not_targeted_twice_and_nothing_is_written(files: dict, tmp_path: Path) -> None:
    out = tmp_path / "twice.onnx"
    with pytest.raises(ExportError, match="already onnxruntime-targeted"):
        convert_onnxruntime(files["targeted"], out)
    with pytest.raises(OptionError, match="overwrite the portable source"):
        convert_onnxruntime(files["portable"], files["portable"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ArtifactLoadError, match="not a readable ONNX file"):
        convert_onnxruntime(bad, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_other_back_ends_refuse_the_targeted_file_in_one_line(files: dict, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from export.openvino import convert_openvino
    from export.precision import PrecisionOptions, write_precision_onnx
    from export.tensorrt import TensorRTBuildOptions, plan_build

    calls = [
        lambda: convert_openvino(files["targeted"], tmp_path / "x.xml"),
        lambda: write_precision_onnx(files["targeted"], tmp_path / "x_fp16.onnx", PrecisionOptions(precision="fp16")),
        lambda: plan_build(files["targeted"], TensorRTBuildOptions()),
    ]
    for call in calls:
        with pytest.raises(ExportError) as info:
            call()
        message = str(info.value)
        assert "onnxruntime-only file" in message and "portable ONNX" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_every_target_names_its_passes() -> None:
    assert ONNX_PASSES["portable"] == ()
    assert [p.name for p in ONNX_PASSES["onnxruntime"]] == list(EXPECTED_PASSES)


def test_ort_command_writes_verifies_and_reports(files: dict, tmp_path: Path) -> None:
    out = tmp_path / "cli_ort.onnx"
    result = CliRunner().invoke(app, ["ort", str(files["portable"]), "-o", str(out), "--json", "-"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verification"]["passed"] is True
    assert report["export"]["passes"]["counts"] == EXPECTED_PASSES
    assert report["export"]["metadata"]["target"] == "onnxruntime"
    again = CliRunner().invoke(app, ["ort", str(out), "-o", str(tmp_path / "x.onnx")])
    assert again.exit_code == 1 and "already onnxruntime-targeted" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_onnx_command_target_option(tmp_path: Path) -> None:
    out = tmp_path / "t.onnx"
    result = CliRunner().invoke(app, ["onnx", "--model", "glnet_tiny", "--input-size", "64", "--target",
                                      "onnxruntime", "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "onnxruntime only" in result.stdout and "PASSED" in result.stdout
    bad = CliRunner().invoke(app, ["onnx", "--model", "glnet_tiny", "--target", "tensorrt", "-o",
                                   str(tmp_path / "u.onnx")])
    assert bad.exit_code != 0 and "--target must be one of portable, onnxruntime" in bad.stderr
    assert not (tmp_path / "u.onnx").exists()


def test_ort_format_file_runs_in_a_bare_session_and_keeps_the_metadata(files: dict, tmp_path: Path) -> None:
    result = convert_onnxruntime(files["portable"], tmp_path / "tiny.ort", fmt="ort")
    assert result.path.suffix == ".ort" and result.passes.counts == EXPECTED_PASSES
    assert result.path.read_bytes()[4:8] == b"ORTM", "onnxruntime's flatbuffer format, not ONNX protobuf"
    session = _bare_session(result.path)
    meta = ArtifactMetadata.from_props(session.get_modelmeta().custom_metadata_map)
    assert meta.target == "onnxruntime" and meta.graph_passes == EXPECTED_PASSES
    for batch, h, w in ((1, 96, 96), (2, 97, 131)):
        x = _photo_batch(batch, (h, w))
        with torch.inference_mode():
            want = files["model"](torch.from_numpy(x)).numpy()
        got = session.run(None, {"input": x})[0]
        assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-4
    assert any("1.5x slower" in n for n in result.notes), "the measured cost of the portable .ort is said"
    with pytest.raises(OptionError, match="must end in .ort"):
        convert_onnxruntime(files["portable"], tmp_path / "x.onnx", fmt="ort")
    baked = convert_onnxruntime(files["portable"], tmp_path / "baked.ort", fmt="ort", ort_level="all")
    meta = ArtifactMetadata.from_props(_bare_session(baked.path).get_modelmeta().custom_metadata_map)
    assert meta.requires.endswith("on a CPU like the one that wrote it")


def test_tensorrt_provider_check_refuses_the_targeted_file_before_any_session(files: dict) -> None:
    # The TensorRT execution provider is not installed here, so the runner cannot be asked
    # for device="tensorrt"; the check it runs first (on an unoptimized CPU session) can.
    from runtimes.base import RuntimeInputError
    from runtimes.onnxruntime import _refuse_for_tensorrt

    with pytest.raises(RuntimeInputError, match="onnxruntime-targeted file .* cannot run on TensorRT") as info:
        _refuse_for_tensorrt(files["targeted"], ort)
    assert "\n" not in str(info.value) and "com.microsoft.Attention" in str(info.value)
    _refuse_for_tensorrt(files["portable"], ort)  # the portable file passes


# --- the attention fusion pass on its own (export.passes.attention) ---------------------


@pytest.fixture(scope="module", params=["batch", "shape"])
def exported(request: pytest.FixtureRequest, files: dict[str, object]) -> Path:
    """The portable files the fusion starts from: the module's dynamic-shape one, and one
    with a dynamic batch (fixed height and width): `helpers.shared_tiny` at `TINY_SIZE`, as
    test_onnx_export exports it, so that the session traces it once for both."""
    if request.param == "shape":
        return files["portable"]  # type: ignore[return-value]
    path = files["folder"] / "tiny_batch.onnx"  # type: ignore[operator]
    if not path.exists():
        export_onnx(shared_tiny(), path, OnnxExportOptions(dynamic="batch", input_size=(TINY_SIZE, TINY_SIZE)))
    return path


def test_every_attention_is_fused(exported: Path) -> None:
    model = onnx.load(exported)
    before = Counter(n.op_type for n in model.graph.node)
    # glnet_tiny: a relation MHA in each of its 3 GLMix blocks, 2 grid MHSA blocks.
    assert fuse_attention(model) == 5
    after = Counter(n.op_type for n in model.graph.node)
    assert after["Attention"] == 5
    assert after["Softmax"] == before["Softmax"] - 5, "the 6 GLMix slot softmaxes stay"
    onnx.checker.check_model(model)


def test_the_fused_file_computes_the_same(exported: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = onnx.load(exported)
    assert fuse_attention(model) == 5
    fused_path = tmp_path / "fused.onnx"
    onnx.save(model, fused_path)
    rng = np.random.default_rng(0)
    plain, fused = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (exported, fused_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dynamic = dims[2].dim_param != ""
    size = (96, 96) if dynamic else (dims[2].dim_value, dims[3].dim_value)
    for shape in [(2, 3, *size)] + ([(1, 3, 131, 97)] if dynamic else []):
        x = rng.standard_normal(shape, dtype=np.float32)
        a, b = plain.run(None, {"input": x})[0], fused.run(None, {"input": x})[0]
        assert float(np.abs(a - b).max() / np.abs(a).max()) < 1e-5
