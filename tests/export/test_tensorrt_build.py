"""What a TensorRT build sets, on a fake TensorRT (tests/fake_tensorrt.py): TF32 cleared
unless asked, DETAILED profiling verbosity, the optimization level, the timing cache taken
strictly and refused when another GPU or version wrote it, exact fp32 pinning in weak
typing, DLA with GPU fallback, and a Jetson's default workspace. The decisions that need no
TensorRT at all (profiles, DLA shapes, the Jetson) run on the real functions."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from fake_tensorrt import REAL_NAMES, Layer, World, fixed_stub_text, install
from onnx import TensorProto, helper

from artifacts.errors import OptionError
from artifacts.metadata import ArtifactMetadata
from export.tensorrt import TensorRTBuildOptions, build_engine, plan_build
from export.trt_profiles import default_workspace_mb, layer_node, layers_of_nodes

GRAPH_NODES = ["node_MatMul_1", "node_MatMul_10", "node_MatMul_12", "node_Softmax_3"]


def _onnx(path: Path, dims: list[int | str]) -> Path:
    """Identity nodes named as the dynamo exporter names them, with glnet-export metadata."""
    names = ["input", *[f"t{i}" for i in range(len(GRAPH_NODES))]]
    nodes = [helper.make_node("Identity", [a], [b], name) for name, a, b in zip(GRAPH_NODES, names, names[1:],
                                                                                  strict=False)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    for key, value in ArtifactMetadata("glnet_tiny", 3, input_size=(64, 64)).to_props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return _onnx(tmp_path / "m.onnx", ["batch", 3, 64, 64])


def test_fp32_builds_clear_tf32_unless_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: Path) -> None:
    world = install(monkeypatch)
    result = build_engine(source, tmp_path / "a.engine")
    assert world.config is not None and "BuilderFlag.TF32" not in world.config.flags
    assert result.manifest.tf32 is False and json.loads(result.manifest_path.read_text())["tf32"] is False
    assert result.manifest.runs_in == "fp32"
    result = build_engine(source, tmp_path / "b.engine", TensorRTBuildOptions(tf32=True))
    assert "BuilderFlag.TF32" in world.config.flags and result.manifest.runs_in == "tf32"


def test_builds_are_detailed_and_take_the_optimization_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             source: Path) -> None:
    """DETAILED for every build: the inspector (bench --per-layer, the DLA placement) needs it."""
    world = install(monkeypatch)
    build_engine(source, tmp_path / "a.engine")
    assert world.config is not None and world.config.profiling_verbosity == "ProfilingVerbosity.DETAILED"
    assert world.config.builder_optimization_level == 3  # TensorRT's default, untouched
    result = build_engine(source, tmp_path / "b.engine", TensorRTBuildOptions(opt_level=5))
    assert world.config.builder_optimization_level == 5 and result.manifest.opt_level == 5
    with pytest.raises(OptionError, match=r"--opt-level must be within 0..5"):
        plan_build(source, TensorRTBuildOptions(opt_level=6))


def test_a_timing_cache_from_another_gpu_or_version_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               source: Path) -> None:
    world = install(monkeypatch)
    cache = tmp_path / "timing.cache"
    build_engine(source, tmp_path / "a.engine", TensorRTBuildOptions(timing_cache=cache))
    assert world.config is not None and world.config.ignore_mismatch == [False]  # strict, as Polygraphy
    origin = json.loads((tmp_path / "timing.cache.json").read_text())
    assert origin == {"tensorrt_version": "10.3.0.30", "gpu_name": "Orin (nvgpu)", "compute_capability": "8.7"}
    build_engine(source, tmp_path / "b.engine", TensorRTBuildOptions(timing_cache=cache))  # same GPU: reused
    assert cache.read_bytes() == b"+timed+timed"
    builds = world.builds
    for changes in ({"tensorrt_version": "10.7.0.23"}, {"gpu_name": "NVIDIA A10", "compute_capability": "8.6"}):
        (tmp_path / "timing.cache.json").write_text(json.dumps({**origin, **changes}))
        with pytest.raises(OptionError) as info:  # before any slow work: nothing was built
            build_engine(source, tmp_path / "c.engine", TensorRTBuildOptions(precision="fp16", timing_cache=cache))
        line = str(info.value)
        assert "\n" not in line and "was written by TensorRT" in line and "Orin (nvgpu)" in line
        assert world.builds == builds and not (tmp_path / "c.fp16.onnx").exists()
    # Another GPU of the same compute capability: the manifest's rule, a note (TensorRT checks the cache's device)
    (tmp_path / "timing.cache.json").write_text(json.dumps({**origin, "gpu_name": "Orin 2"}))
    result = build_engine(source, tmp_path / "e.engine", TensorRTBuildOptions(timing_cache=cache))
    assert [n for n in result.notes if "timed on Orin 2, this is Orin (nvgpu)" in n] and world.builds > builds
    (tmp_path / "timing.cache.json").unlink()  # no record of who wrote it: TensorRT's own check decides
    world.accepts_cache = False
    with pytest.raises(OptionError, match="another TensorRT version or on another device"):
        build_engine(source, tmp_path / "d.engine", TensorRTBuildOptions(timing_cache=cache))
    assert not (tmp_path / "d.engine").exists()


def test_layers_match_their_onnx_node_exactly() -> None:
    """node_MatMul_1 must not pin node_MatMul_10..19; `_57` is the parser's uniqueness suffix."""
    nodes = set(GRAPH_NODES)
    assert layer_node("node_MatMul_1", "", nodes) == "node_MatMul_1"
    assert layer_node("node_MatMul_10", "", nodes) == "node_MatMul_10"
    assert layer_node("node_MatMul_1_57", "", nodes) == "node_MatMul_1"  # a second layer of node_MatMul_1
    assert layer_node("node_MatMul_12", "", nodes) == "node_MatMul_12"  # a node, not node_MatMul_1's 2nd layer
    assert layer_node("renamed", "[ONNX Layer: node_MatMul_1 | Local Function: f]", nodes) == "node_MatMul_1"
    assert layer_node("ONNXTRT_Broadcast_3", "", nodes) is None
    layers = [("node_MatMul_1", ""), ("node_MatMul_10", ""), ("node_MatMul_1_57", ""), ("node_MatMul_12", ""),
              ("x", "[ONNX Layer: node_MatMul_1]")]
    assert layers_of_nodes(layers, ["node_MatMul_1"], nodes) == [0, 2, 4]


def test_weak_typing_pins_exactly_the_kept_nodes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 source: Path) -> None:
    layers = [Layer("node_MatMul_1"), Layer("node_MatMul_10"), Layer("node_MatMul_1_57"), Layer("node_Softmax_3"),
              Layer("node_MatMul_12")]
    world = install(monkeypatch, World(layers=layers))
    from export import tensorrt as trt_build

    plan = plan_build(source, TensorRTBuildOptions(precision="fp16"))
    trt_build._parse_and_build(source, plan, TensorRTBuildOptions(precision="fp16"), False,
                               ["node_MatMul_1", "node_Softmax_3"])
    assert world.network is not None
    pinned = [layer.name for layer in world.network.layers if layer.precision == "float32"]
    assert pinned == ["node_MatMul_1", "node_MatMul_1_57", "node_Softmax_3"]
    assert all(layer.output_types == {0: "float32"} for layer in world.network.layers if layer.name in pinned)
    assert world.config is not None and {"BuilderFlag.FP16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS"} <= \
        world.config.flags


def test_dla_builds_fall_back_to_the_gpu_and_say_which_layers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    static = _onnx(tmp_path / "static.onnx", [1, 3, 64, 64])
    world = install(monkeypatch, World(layers=[Layer("node_Conv_0"), Layer("node_Softmax_3")], dla_cores=2,
                                       dla_unsupported={"node_Softmax_3"}))
    result = build_engine(static, tmp_path / "dla.engine", TensorRTBuildOptions(precision="fp16", dla_core=1))
    config = world.config
    assert config is not None and config.default_device_type == "DeviceType.DLA" and config.DLA_core == 1
    assert "BuilderFlag.GPU_FALLBACK" in config.flags
    assert result.manifest.dla_core == 1 and result.manifest.gpu_fallback_layers == ["node_Softmax_3"]
    assert any("1 layer(s) run on the GPU" in n for n in result.notes)
    with pytest.raises(OptionError, match="this device has 2 DLA core"):
        build_engine(static, tmp_path / "x.engine", TensorRTBuildOptions(precision="fp16", dla_core=2))


def test_dla_needs_a_static_shape_and_a_reduced_precision(tmp_path: Path, source: Path) -> None:
    """Refused by plan_build, before any TensorRT or slow work."""
    with pytest.raises(OptionError) as info:
        plan_build(source, TensorRTBuildOptions(precision="fp16", dla_core=0))
    assert "static shape" in str(info.value) and "1x3x64x64 .. 8x3x64x64" in str(info.value)
    with pytest.raises(OptionError, match="fp16 or int8 only"):
        plan_build(source, TensorRTBuildOptions(dla_core=0, min_shape=(2, 3, 64, 64), max_shape=(2, 3, 64, 64)))
    plan = plan_build(source, TensorRTBuildOptions(precision="fp16", dla_core=0, min_shape=(2, 3, 64, 64),
                                                   opt_shape=(2, 3, 64, 64), max_shape=(2, 3, 64, 64)))
    assert plan.profile.min == plan.profile.max == (2, 3, 64, 64)


def test_a_jetson_gets_a_quarter_of_its_memory_as_workspace(tmp_path: Path, source: Path) -> None:
    jetson = tmp_path / "jetson"
    (jetson / "proc/device-tree").mkdir(parents=True)
    (jetson / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\0")
    (jetson / "proc/meminfo").write_text("MemTotal:        7800000 kB\nMemFree:  100 kB\n")
    plan = plan_build(source, TensorRTBuildOptions(), host=jetson)
    assert plan.jetson is not None and plan.jetson.startswith("NVIDIA Jetson Orin Nano")
    assert plan.workspace_mb == 7800000 * 1024 // 4 >> 20 == 1904
    assert plan_build(source, TensorRTBuildOptions(workspace_mb=512), host=jetson).workspace_mb == 512
    server = tmp_path / "server"
    (server / "proc").mkdir(parents=True)
    (server / "proc/meminfo").write_text("MemTotal:       65000000 kB\n")
    assert plan_build(source, TensorRTBuildOptions(), host=server).workspace_mb is None  # TensorRT's default
    (jetson / "proc/device-tree/model").unlink()
    (jetson / "etc").mkdir()
    (jetson / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081\n")
    assert plan_build(source, TensorRTBuildOptions(), host=jetson).jetson == "Jetson"  # the release file alone
    (jetson / "etc/nv_tegra_release").write_text("")  # present but naming no release, as the doctor reads it
    empty_release = plan_build(source, TensorRTBuildOptions(), host=jetson)
    assert empty_release.jetson is None and empty_release.workspace_mb is None
    assert default_workspace_mb("Jetson", 512 << 20) == 256  # never below 256 MB


def test_the_fake_uses_tensorrts_real_names() -> None:
    """Every TensorRT name the fakes stand in for is in TensorRT's own API (tensorrt-stubs)."""
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        pytest.skip("needs tensorrt-stubs (pip install --no-deps tensorrt-stubs)")
    stub = Path(spec.origin).parent.parent / "tensorrt_bindings" / "tensorrt.pyi"
    tree = ast.parse(fixed_stub_text(stub.read_text(encoding="utf-8")))
    members = {node.name: {n.target.id if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                           else getattr(n, "name", None) for n in node.body}
               for node in tree.body if isinstance(node, ast.ClassDef)}
    missing = [f"{cls}.{name}" for cls, names in REAL_NAMES.items() for name in names
               if name not in members.get(cls, set())]
    assert not missing, missing
