"""The TensorRT runner's own logic, on a fake TensorRT and fake CUDA memory (tests/fake_tensorrt.py):
every output by name (`infer` copying back only the one it returns), CUDA-graph capture and
replay per input shape (captured ahead of the first call by `prepare`), the fallback when a
capture fails, the lean-runtime switch with and without a manifest, and the precision a TF32
engine is judged in. TensorRT and a GPU are not here; the real runs are the `tensorrt` tests
in tests/export/test_tensorrt.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import OldRuntime, World, install

from artifacts.engine_manifest import EngineManifest, Profile, manifest_path
from verification.metrics import DEFAULT_TOLERANCES, tolerance_for


def _engine(tmp_path: Path, **manifest: object) -> Path:
    """An engine file; with `manifest` fields, its manifest beside it (as the build writes it)."""
    path = tmp_path / "m.engine"
    path.write_bytes(b"plan")
    if manifest:
        m = EngineManifest("10.3.0.30", "Orin (nvgpu)", "8.7", "fp32", "strong",
                           [Profile("input", (1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 128, 128))], "m.onnx", "ab" * 32)
        for key, value in manifest.items():
            setattr(m, key, value)
        manifest_path(path).write_text(m.to_json(), encoding="utf-8")
    return path


def _expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"logits": x.mean(axis=(1, 2, 3))[:, None] * np.arange(1, 6), "features": 2 * x}


def _x(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_every_output_comes_back_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runtimes.tensorrt import TensorRTRunner

    install(monkeypatch)
    with TensorRTRunner(_engine(tmp_path, tf32=False)) as runner:
        x = _x((2, 3, 64, 64), 0)
        outputs = runner.infer_all(x)
        assert list(outputs) == ["logits", "features"]  # the engine's order
        for name, want in _expected(x).items():
            np.testing.assert_allclose(outputs[name], want, rtol=1e-6)
        np.testing.assert_allclose(runner.infer(x), _expected(x)["logits"], rtol=1e-6)
        assert runner.precision == "fp32" and runner.cuda_graph is False


def test_infer_copies_back_only_the_first_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runtimes.tensorrt import TensorRTRunner

    world = install(monkeypatch)
    with TensorRTRunner(_engine(tmp_path, tf32=False)) as runner:
        cuda, copied = world.cuda[-1], []
        download = cuda.download
        monkeypatch.setattr(cuda, "download", lambda buffer, stream: copied.append(buffer) or download(buffer, stream))
        x = _x((2, 3, 32, 32), 1)
        np.testing.assert_allclose(runner.infer(x), _expected(x)["logits"], rtol=1e-6)
        assert len(copied) == 1  # the features (as large as the input) stay on the device
        assert list(runner.infer_all(x)) == ["logits", "features"] and len(copied) == 3


def test_cuda_graphs_are_captured_once_per_shape_and_replay_new_inputs(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    from runtimes.tensorrt import TensorRTRunner

    world = install(monkeypatch)
    with TensorRTRunner(_engine(tmp_path), cuda_graph=True) as runner:
        cuda, context = world.cuda[-1], runner._context
        a, b = (1, 3, 64, 64), (2, 3, 32, 48)
        for i, shape in enumerate([a, a, a, b, b, a]):
            x = _x(shape, i)
            np.testing.assert_allclose(runner.infer_all(x)["features"], 2 * x, rtol=1e-6)  # this call's input
        # a: run + capture, then 2 replays; b: run + capture, 1 replay; a again: its own graph
        assert cuda.captures == 2 and cuda.replays == 4 and context.enqueued == 2
        assert context.shape == a  # the context was set back to the shape of the graph replayed last
    with TensorRTRunner(_engine(tmp_path)) as plain:
        for i in range(3):
            plain.infer(_x(a, i))
        assert world.cuda[-1].captures == 0 and plain._context.enqueued == 3


def test_prepare_captures_the_graph_before_the_first_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A benchmark's cold run or an app's first request replays a graph captured ahead."""
    import runtimes

    world = install(monkeypatch)
    a, b = (1, 3, 64, 64), (2, 3, 32, 48)
    with runtimes.load(_engine(tmp_path), cuda_graph=True) as runner:
        cuda, context = world.cuda[-1], runner._context
        runner.prepare(a)
        runner.prepare(a)  # once per shape
        assert cuda.captures == 1 and context.enqueued == 1 and cuda.replays == 0
        for i, shape in enumerate([a, b, a]):
            x = _x(shape, i)
            np.testing.assert_allclose(runner.infer_all(x)["features"], 2 * x, rtol=1e-6)
        # a: replays from its first call; b, not prepared: run + capture in the call, as before
        assert cuda.replays == 2 and cuda.captures == 2 and context.enqueued == 2
        with pytest.raises(runtimes.RuntimeInputError, match="outside the engine's profile 1x3x32x32 .. 4x3x128x128"):
            runner.prepare((8, 3, 64, 64))
        for shape, axes in [((3, 64, 64), 3), ((1, 1, 3, 64, 64), 5), ((), 0)]:  # a bare tuple, no array check
            with pytest.raises(runtimes.RuntimeInputError, match=rf"has {axes} axes; the engine's input 'input' has 4"):
                runner.prepare(shape)
        assert cuda.captures == 2 and context.enqueued == 2  # refused before any buffer or capture
    with runtimes.load(_engine(tmp_path)) as plain:  # no graphs: nothing to do ahead
        plain.prepare(a)
        assert world.cuda[-1].memory == {} and plain._context.enqueued == 0


def test_a_failed_capture_runs_that_shape_without_a_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runtimes.tensorrt import TensorRTRunner

    world = install(monkeypatch, World(fail_capture="operation not permitted when stream is capturing"))
    with TensorRTRunner(_engine(tmp_path), cuda_graph=True) as runner:
        for i in range(3):
            x = _x((1, 3, 64, 64), i)
            np.testing.assert_allclose(runner.infer(x), _expected(x)["logits"], rtol=1e-6)
        assert runner._context.enqueued == 3 and world.cuda[-1].replays == 0
        failed = [n for n in runner.notes if "CUDA graph capture failed" in n]
        assert len(failed) == 1 and "1x3x64x64" in failed[0] and "not permitted" in failed[0]
        runner.prepare((2, 3, 64, 64))  # a failure in prepare: noted once, and the calls run plain
        runner.infer(_x((2, 3, 64, 64), 3))
        failed = [n for n in runner.notes if "CUDA graph capture failed" in n]
        assert runner._context.enqueued == 5 and len(failed) == 2 and world.cuda[-1].replays == 0


@pytest.mark.parametrize("with_manifest", [True, False])
def test_version_compatible_engines_load_with_or_without_their_manifest(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path, with_manifest: bool) -> None:
    """The lean runtime inside a version-compatible plan is host code TensorRT runs only when
    allowed; an engine moved without its JSON must load too."""
    from runtimes.tensorrt import TensorRTRunner

    world = install(monkeypatch)
    path = _engine(tmp_path, version_compatible=True) if with_manifest else _engine(tmp_path)
    with TensorRTRunner(path) as runner:
        assert world.runtimes[-1].host_code_at_deserialize is True
        assert runner.precision == ("tf32" if with_manifest else "unknown")  # tf32 not given: TensorRT's default
        assert any("no manifest" in n for n in runner.notes) != with_manifest


def test_older_tensorrt_without_the_switch_and_dla_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runtimes.tensorrt import TensorRTRunner

    world = install(monkeypatch, World(runtime=OldRuntime))
    with TensorRTRunner(_engine(tmp_path, precision="fp16", dla_core=1)) as runner:
        assert world.runtimes[-1].host_code_at_deserialize is None and runner.precision == "fp16"
        assert world.runtimes[-1].DLA_core == 1  # the engine's DLA core
        assert runner._context.nvtx_verbosity == "ProfilingVerbosity.LAYER_NAMES_ONLY"  # built DETAILED, run quiet


def test_a_tf32_engine_is_judged_by_the_tf32_tolerance(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Verification takes the tolerance of the runner's precision, which comes from the manifest."""
    from runtimes.tensorrt import TensorRTRunner

    install(monkeypatch)
    for tf32, precision, runs_in in ((True, "fp32", "tf32"), (False, "fp32", "fp32"), (True, "fp16", "fp16")):
        with TensorRTRunner(_engine(tmp_path, tf32=tf32, precision=precision)) as runner:
            assert runner.precision == runs_in
    tf32_tol, fp32, fp16 = DEFAULT_TOLERANCES["tf32"], DEFAULT_TOLERANCES["fp32"], DEFAULT_TOLERANCES["fp16"]
    assert tolerance_for("tf32") == tf32_tol
    assert fp32.max_rel < tf32_tol.max_rel < fp16.max_rel and fp16.min_cosine < tf32_tol.min_cosine < fp32.min_cosine
