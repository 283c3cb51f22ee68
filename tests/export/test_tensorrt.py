"""TensorRT: profile and manifest logic, options, the missing-TensorRT path, typing, and
(marked `tensorrt`, where TensorRT and a GPU exist) real engine builds compared with
onnxruntime."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fake_tensorrt import fixed_stub_text
from onnx import TensorProto, helper
from typer.testing import CliRunner

import runtimes
from artifacts.backends import TRT_MISSING, BackendUnavailableError, tensorrt_available
from artifacts.engine_manifest import BuildDevice, device_match
from artifacts.errors import OptionError
from artifacts.metadata import ArtifactMetadata
from export.tensorrt import TensorRTBuildOptions, plan_build
from export.trt_profiles import (
    EngineManifest,
    ManifestError,
    Profile,
    TimingCacheOrigin,
    check_manifest,
    check_opset,
    check_timing_cache,
    default_profile,
    manifest_path,
    manifest_problems,
    parse_shape,
    parse_version,
    resolve_profile,
    timing_cache_origin_path,
)
from glnet_export.cli import app

ROOT = Path(__file__).resolve().parents[2]
HAVE_GPU_TRT = tensorrt_available() and torch.cuda.is_available()
needs_trt = pytest.mark.skipif(not HAVE_GPU_TRT, reason="TensorRT is not installed here (no NVIDIA GPU; TensorRT "
                               "comes with JetPack or NVIDIA's index)")
no_trt = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")


def _tiny_onnx(path: Path, dims: list[int | str], opset: int = 20) -> Path:
    """A GlobalAveragePool graph with glnet-export metadata: enough for planning a build."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dims[0], 3, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    meta = ArtifactMetadata("glnet_tiny", 3, input_size=(224, 224), glnet_export_version="0.1.0")
    for key, value in meta.to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def _manifest(**changes: object) -> EngineManifest:
    base = EngineManifest("10.3.0.30", "Orin (nvgpu)", "8.7", "fp16", "strong",
                          [Profile("input", (1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))],
                          "m.onnx", "ab" * 32)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def test_shapes_and_versions_parse() -> None:
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(OptionError, match="NxCxHxW"):
        parse_shape("1x3xbig")
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("11.0.0b1") == (11, 0, 0)
    assert parse_version("10.14.1.48.post1") == (10, 14, 1, 48)


def test_default_profiles_follow_the_onnx_dims() -> None:
    p = default_profile("input", ("batch", 3, 224, 224), (224, 224))
    assert (p.min, p.opt, p.max) == ((1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))
    p = default_profile("input", ("batch", 3, "height", "width"), (224, 256))
    assert (p.min, p.opt, p.max) == ((1, 3, 112, 128), (1, 3, 224, 256), (8, 3, 448, 512))
    p = default_profile("input", (2, 3, 224, 224), (224, 224))
    assert p.min == p.opt == p.max == (2, 3, 224, 224)


def test_profiles_take_overrides_and_refuse_impossible_shapes() -> None:
    dims = ("batch", 3, "height", "width")
    p = resolve_profile("input", dims, (224, 224), max_shape=(16, 3, 320, 320))
    assert p.max == (16, 3, 320, 320) and p.opt == (1, 3, 224, 224)
    p = resolve_profile("input", dims, (224, 224), min_shape=(4, 3, 256, 256), max_shape=(8, 3, 320, 320))
    assert p.opt == (4, 3, 256, 256)  # the default opt, clamped into [min, max]
    for kwargs, message in (
        ({"max_shape": (2, 3, 224, 224), "opt_shape": (4, 3, 224, 224)}, "min <= opt <= max"),
        ({"max_shape": (8, 4, 224, 224)}, "fixed at 3"),
        ({"min_shape": (1, 3, 16, 16)}, ">= 32"),
        ({"max_shape": (8, 3, 224)}, "differ in rank"),
    ):
        with pytest.raises(OptionError, match=message):
            resolve_profile("input", dims, (224, 224), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="fixed at 224"):
        resolve_profile("input", ("batch", 3, 224, 224), (224, 224), max_shape=(8, 3, 256, 256))


def test_opset_23_needs_tensorrt_10_14() -> None:
    check_opset(20, "10.3.0.30")
    check_opset(23, "10.14.1.48")
    check_opset(23, "11.0.0.1")
    with pytest.raises(OptionError, match="--opset 20"):
        check_opset(23, "10.3.0.30")


def test_manifest_round_trips_and_sits_beside_the_engine(tmp_path: Path) -> None:
    m = _manifest(metadata={"model": "glnet_tiny"}, version_compatible=True, workspace_mb=512)
    assert EngineManifest.from_json(m.to_json()) == m
    assert json.loads(m.to_json())["profiles"][0]["max"] == [8, 3, 224, 224]
    assert manifest_path(tmp_path / "m.engine") == tmp_path / "m.engine.json"
    with pytest.raises(ManifestError, match="not a glnet-export engine manifest"):
        EngineManifest.from_json("{}", "x.json")


def test_manifest_mismatches_stop_with_one_clear_line() -> None:
    m = _manifest()
    assert manifest_problems(m, "10.3.0.30", "Orin (nvgpu)", "8.7") == []
    assert manifest_problems(m, "10.3.0.26", "Orin (nvgpu)", "8.7") == []  # the build number may differ
    assert "built with TensorRT 10.3.0.30" in manifest_problems(m, "10.4.0.26", "Orin (nvgpu)", "8.7")[0]
    assert "compute capability 8.7" in manifest_problems(m, "10.3.0.30", "NVIDIA H100", "9.0")[0]
    vc = _manifest(version_compatible=True)
    assert manifest_problems(vc, "10.14.1.48", "Orin (nvgpu)", "8.7") == []  # later 10.x
    assert manifest_problems(vc, "11.1.0.1", "Orin (nvgpu)", "8.7") == []  # 10 -> 11 is supported
    assert manifest_problems(vc, "10.2.0.19", "Orin (nvgpu)", "8.7")  # never older
    with pytest.raises(ManifestError) as info:
        check_manifest(m, Path("m.engine"), "10.7.0.23", "NVIDIA A10", "8.6")
    line = str(info.value)
    assert "\n" not in line and "TensorRT 10.3.0.30" in line and "8.6" in line and "Rebuild" in line
    warnings = check_manifest(m, Path("m.engine"), "10.3.0.30", "Orin 2", "8.7")
    assert len(warnings) == 1 and "tuned on Orin (nvgpu)" in warnings[0]


def test_one_rule_for_a_recorded_tensorrt_and_gpu(tmp_path: Path) -> None:
    """The engine's manifest and the timing cache's record are judged by device_match alike."""
    here = BuildDevice("10.3.0.26", "Orin (nvgpu)", "8.7")
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"timed")
    for recorded, usable in ((BuildDevice("10.3.0.30", "Orin 2", "8.7"), True),
                             (BuildDevice("10.4.0.26", "Orin (nvgpu)", "8.7"), False),
                             (BuildDevice("10.3.0.30", "NVIDIA A10", "8.6"), False)):
        assert device_match(recorded, here).usable is usable
        m = _manifest(tensorrt_version=recorded.tensorrt_version, gpu_name=recorded.gpu_name,
                      compute_capability=recorded.compute_capability)
        assert (manifest_problems(m, here.tensorrt_version, here.gpu_name, here.compute_capability) == []) is usable
        timing_cache_origin_path(cache).write_text(TimingCacheOrigin(*dataclasses.astuple(recorded)).to_json())
        if usable:
            assert len(check_timing_cache(cache, here)) == 1  # another GPU name: a note from both
            assert len(check_manifest(m, Path("m.engine"), *dataclasses.astuple(here))) == 1
        else:
            with pytest.raises(OptionError, match="was written by TensorRT"):
                check_timing_cache(cache, here)
    assert check_timing_cache(cache, BuildDevice("10.3.0.30", "NVIDIA A10", "8.6")) == []  # the very device


def test_plan_build_reads_the_onnx_and_checks_options(tmp_path: Path) -> None:
    source = _tiny_onnx(tmp_path / "m.onnx", ["batch", 3, 224, 224])
    plan = plan_build(source, TensorRTBuildOptions(max_shape=(4, 3, 224, 224)))
    assert plan.input_name == "input" and plan.opset == 20 and plan.profile.max == (4, 3, 224, 224)
    assert plan.metadata["model"] == "glnet_tiny"
    for options, message in (
        (TensorRTBuildOptions(precision="int4"), "--precision"),
        (TensorRTBuildOptions(precision="int8"), "--calib"),
        (TensorRTBuildOptions(typing="loose"), "--typing"),
        (TensorRTBuildOptions(workspace_mb=0), "--workspace"),
    ):
        with pytest.raises(OptionError, match=message):
            plan_build(source, options)
    with pytest.raises(OptionError, match="no such ONNX file"):
        plan_build(tmp_path / "missing.onnx", TensorRTBuildOptions())


@no_trt
def test_without_tensorrt_the_build_and_the_runner_say_what_to_install(tmp_path: Path) -> None:
    source = _tiny_onnx(tmp_path / "m.onnx", ["batch", 3, 224, 224])
    result = CliRunner().invoke(app, ["tensorrt", str(source), "--precision", "fp16"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: TensorRT is not installed here (it comes with JetPack on a Jetson, or pip install "
        "'glnet-export[tensorrt]' from NVIDIA's index); use --onnx-only to write the precision-ready ONNX")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(BackendUnavailableError, match=re.escape(TRT_MISSING)):
        runtimes.load(engine)
    assert not (tmp_path / "m.fp16.onnx").exists()  # failed before any work


def test_cli_refuses_bad_profiles_before_any_work(tmp_path: Path) -> None:
    source = _tiny_onnx(tmp_path / "m.onnx", ["batch", 3, 224, 224])
    result = CliRunner().invoke(app, ["tensorrt", str(source), "--max", "2x3x224x224", "--opt", "4x3x224x224"])
    assert result.exit_code == 1 and "min <= opt <= max" in result.output
    for args, message in ((["--precision", "fp16", "--dla-core", "0"], "--dla-core needs a static shape"),
                          (["--dla-core", "0", "--min", "1x3x224x224", "--max", "1x3x224x224"], "fp16 or int8 only"),
                          (["--opt-level", "7"], "--opt-level must be within 0..5")):
        result = CliRunner().invoke(app, ["tensorrt", str(source), *args])
        assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_tensorrt_modules_import_without_tensorrt() -> None:
    code = ("import sys, export.tensorrt, runtimes.tensorrt, glnet_export.tensorrt_cmd; "
            "assert 'tensorrt' not in sys.modules and 'tensorrt_bindings' not in sys.modules, 'imported eagerly'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def _patched_stubs(target: Path) -> None:
    """tensorrt-stubs as mypy can read them: they install as `tensorrt/` without py.typed (so
    mypy skips them as untyped) and their generated .pyi has a few syntax errors (parameters
    named `in`, a default-less parameter after defaults). Copy, fix those, put on mypy_path."""
    origin = importlib.util.find_spec("tensorrt_stubs")
    assert origin is not None and origin.origin is not None
    site = Path(origin.origin).parent.parent
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site / package, target / package)
    for stub in target.rglob("*.pyi"):
        text = fixed_stub_text(stub.read_text(encoding="utf-8"))
        ast.parse(text, str(stub))  # a new syntax error in a later stubs version fails here, loudly
        stub.write_text(text, encoding="utf-8")


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None or importlib.util.find_spec("tensorrt_stubs") is None,
                    reason="needs mypy and tensorrt-stubs (pip install --no-deps tensorrt-stubs)")
def test_mypy_checks_the_tensorrt_code_against_tensorrt_stubs(tmp_path: Path) -> None:
    _patched_stubs(tmp_path / "stubs")
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\npython_version = 3.11\nignore_missing_imports = True\n"
                      f"mypy_path = {tmp_path / 'stubs'}\n[mypy-tensorrt.*]\nignore_errors = True\n"
                      "[mypy-tensorrt_bindings.*]\nignore_errors = True\n"
                      # The point is TensorRT's API: torch and onnx (most of mypy's time) read as Any.
                      "[mypy-torch.*,onnx.*,onnxscript.*,onnxruntime.*]\nfollow_imports = skip\n")
    bad = tmp_path / "bad.py"  # proves the stubs are used: this must be caught
    bad.write_text("import tensorrt as trt\n\n\ndef f(c: trt.IExecutionContext) -> None:\n"
                   "    c.execute_async_v3('stream')\n")

    run = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--follow-imports=silent",
                          "--cache-dir", str(tmp_path / "cache"), str(bad), "runtimes/tensorrt.py",
                          "export/tensorrt.py", "export/trt_profiles.py"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and 'incompatible type "str"; expected "int"' in errors[0], run.stdout
    assert errors[0].startswith(str(bad)), run.stdout  # and none in the TensorRT modules


# --- On a machine with TensorRT and an NVIDIA GPU (a Jetson, a CUDA workstation) ---------


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.onnx import OnnxExportOptions, export_onnx
    from glnet.testing import seeded_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trt") / "glnet_tiny.onnx"
    # Perturbed: a fresh init's identity LayerNorms and BatchNorms would hide a lost affine.
    export_onnx(seeded_model("glnet_tiny", seed=7), path,
                OnnxExportOptions(dynamic="batch"))
    return path


@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_runs_and_matches_onnxruntime(tiny_onnx: Path, tmp_path: Path, precision: str) -> None:
    from export.tensorrt import build_engine
    from verification.metrics import compare_outputs, tolerance_for

    cache = tmp_path / "timing.cache"
    options = TensorRTBuildOptions(precision=precision, max_shape=(4, 3, 224, 224), workspace_mb=1024,
                                   timing_cache=cache)
    result = build_engine(tiny_onnx, tmp_path / "m.engine", options)
    assert result.path.is_file() and cache.is_file() and result.manifest.typing == "strong"
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["precision"] == precision and manifest["metadata"]["precision"] == precision
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float32)
    with runtimes.load(tiny_onnx) as ort_runner, runtimes.load(result.path) as trt_runner:
        assert trt_runner.precision == precision and trt_runner.metadata is not None
        metrics = compare_outputs(ort_runner.infer(x), trt_runner.infer(x))
        with pytest.raises(runtimes.RuntimeInputError, match="outside the engine's profile"):
            trt_runner.infer(np.zeros((5, 3, 224, 224), np.float32))
        with runtimes.load(result.path, cuda_graph=True) as graphs:  # captured, then replayed twice
            for _ in range(3):
                np.testing.assert_allclose(graphs.infer(x), trt_runner.infer(x), rtol=1e-5, atol=1e-6)
            assert not [n for n in graphs.notes if "capture failed" in n], graphs.notes
    tol = tolerance_for(precision)
    assert metrics["max_rel"] <= tol.max_rel and metrics["cosine"] >= tol.min_cosine, metrics
    build_engine(tiny_onnx, tmp_path / "again.engine", options)  # reuses and rewrites the timing cache


@pytest.mark.tensorrt
@needs_trt
def test_engine_with_a_foreign_manifest_stops_with_one_line(tiny_onnx: Path, tmp_path: Path) -> None:
    from export.tensorrt import build_engine

    result = build_engine(tiny_onnx, tmp_path / "m.engine", TensorRTBuildOptions(max_shape=(2, 3, 224, 224)))
    data = json.loads(result.manifest_path.read_text())
    data["tensorrt_version"], data["compute_capability"] = "9.9.9.9", "1.0"
    result.manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="cannot run here: it was built with TensorRT 9.9.9.9"):
        runtimes.load(result.path)
