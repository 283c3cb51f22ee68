"""`glnet-export onnx`: right at every shape it claims, proven after every export.

Each trap of FIELD_NOTES has a test here: the legacy exporter's refusal (1), the batch-1
specialisation (2), the silent mis-export of the reference form at other sizes (3) and
its fix (4).
"""

from __future__ import annotations

import copy
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY_SIZE, reference_form, rel_error, shared_tiny, torch_logits
from onnx import numpy_helper

import glnet
import runtimes
from artifacts.atomic import atomic_outputs
from artifacts.metadata import ArtifactMetadata
from export.onnx import OnnxExportOptions, export_onnx
from verification.artifact import VerifyOptions, verify_onnx
from verification.metrics import shapes_to_verify

TINY = "glnet_tiny"


@pytest.fixture(scope="module")
def tiny() -> glnet.GLNet:
    # Every export here is traced at `TINY_SIZE`: the session traces each (weights, options)
    # once (conftest), and the shared `tiny_dynamic_onnx` is this model traced at this size
    # with a dynamic shape, so these exports reuse traces the session makes anyway.
    return shared_tiny()


@pytest.mark.parametrize("dynamic", ["none", "batch", "shape"])
def test_tiny_export_runs_right_at_other_shapes(dynamic: str, tiny: glnet.GLNet, tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    result = export_onnx(tiny, path, OnnxExportOptions(dynamic=dynamic, input_size=(TINY_SIZE, TINY_SIZE)))
    assert path.is_file() and result.size_bytes == path.stat().st_size
    assert list(tmp_path.iterdir()) == [path], "one self-contained file, no side files"
    report = verify_onnx(path, tiny)
    assert report.passed, report.results
    # The export shape; a larger batch when the batch is dynamic; when H and W are, a larger
    # and an odd resolution too (FIELD_NOTES trap 3). Written out, not recomputed.
    expected = [(1, 3, 64, 64)] + ([(3, 3, 64, 64)] if dynamic != "none" else []) + (
        [(1, 3, 128, 128), (2, 3, 49, 81)] if dynamic == "shape" else [])
    assert [r.shape for r in report.results] == expected == shapes_to_verify(result.metadata, 1)
    assert all(r.photos > 0 for r in report.results), "real photographs are part of every check"

    rng = np.random.default_rng(0)
    with runtimes.load(path) as runner:
        graph_shape = runner.inputs[0].shape
        if dynamic == "none":
            assert graph_shape == (1, 3, TINY_SIZE, TINY_SIZE)
            with pytest.raises(runtimes.RuntimeInputError, match="fixed size"):
                runner.infer(rng.standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32))
            return
        assert not isinstance(graph_shape[0], int), "batch must stay dynamic"
        shapes = [(3, 3, TINY_SIZE, TINY_SIZE)] + ([(1, 3, 224, 224), (2, 3, 97, 131), (1, 3, 64, 96)]
                                         if dynamic == "shape" else [])
        for shape in shapes:
            x = rng.standard_normal(shape, dtype=np.float32)
            assert rel_error(torch_logits(tiny, x), runner.infer(x)) < 1e-5, shape


def test_metadata_is_stored_and_parsed_back(tiny: glnet.GLNet, tmp_path: Path) -> None:
    path = tmp_path / "meta.onnx"
    export_onnx(tiny, path, OnnxExportOptions(dynamic="batch", input_size=(TINY_SIZE, TINY_SIZE)),
                checkpoint_sha256="ab" * 32)
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    meta = ArtifactMetadata.from_props(props)
    assert meta.model == TINY and meta.num_classes == 1000
    assert meta.config["dims"] == list(tiny.cfg.dims)
    assert OnnxExportOptions().input_size == (224, 224), "the default export size"
    assert meta.input_size == (TINY_SIZE, TINY_SIZE)
    assert meta.mean == (0.485, 0.456, 0.406) and meta.color_order == "RGB"
    assert meta.checkpoint_sha256 == "ab" * 32 and not meta.random_weights
    assert meta.torch_version == torch.__version__ and meta.onnx_version == onnx.__version__
    assert meta.glnet_export_version and meta.labels == "imagenet-1k" and meta.opset == 20
    with runtimes.load(path) as runner:
        assert runner.metadata == meta


def test_example_batch_never_freezes_a_dynamic_batch(tiny: glnet.GLNet, tmp_path: Path) -> None:
    # Trap 2: the dynamo exporter specialises an axis whose example size is 1. With a
    # named Dim, torch 2.13 either bakes the batch to 1 or (here) refuses with an internal
    # "Invalid ranges [2:1]" error; neither gives a dynamic batch.
    raw = tmp_path / "raw.onnx"
    deploy = copy.deepcopy(tiny).to_deploy()
    batch = torch.export.Dim("batch", min=1, max=64)
    try:
        torch.onnx.export(deploy, (torch.randn(1, 3, 64, 64),), raw, dynamo=True, external_data=False,
                          dynamic_shapes={"x": {0: batch}})
    except Exception:  # noqa: BLE001 - the refusal is one face of the trap
        pass
    else:
        dim0 = onnx.load(raw).graph.input[0].type.tensor_type.shape.dim[0]
        assert dim0.dim_value == 1, "the trap: a batch-1 example gives a fixed batch of 1"
    # Ours asks for batch 1 and still gets a dynamic batch.
    ours = tmp_path / "ours.onnx"
    export_onnx(tiny, ours, OnnxExportOptions(dynamic="batch", batch=1, input_size=(TINY_SIZE, TINY_SIZE)))
    dim0 = onnx.load(ours).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value


def test_legacy_exporter_refuses_glmix(tiny: glnet.GLNet, tmp_path: Path) -> None:
    # Trap 1: why the dynamo exporter is the only one used.
    with pytest.raises(Exception, match="adaptive_avg_pool2d"):
        torch.onnx.export(tiny, (torch.randn(1, 3, 224, 224),), tmp_path / "legacy.onnx", dynamo=False)


def test_verification_catches_the_reference_forms_silent_misexport(
    tiny: glnet.GLNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trap 3: the reference form exports with dynamic H and W without any error, but its
    # adaptive pooling is baked to the traced size. Exporting it (by disabling the deploy
    # switch) must be caught by the verification at other shapes.
    monkeypatch.setattr(glnet.GLNet, "to_deploy", reference_form)  # traced once with test_onnx_command's
    path = tmp_path / "reference_form.onnx"
    export_onnx(tiny, path, OnnxExportOptions(dynamic="shape", input_size=(224, 224)))
    report = verify_onnx(path, tiny, VerifyOptions(max_photos=2))  # the random inputs alone show it
    assert not report.passed
    by_shape = {r.shape: r for r in report.results}
    assert by_shape[(1, 3, 224, 224)].passed, "right at the traced size: what makes the trap silent"
    assert not by_shape[(1, 3, 288, 288)].passed


def test_verification_fails_loudly_on_a_corrupted_weight(tiny: glnet.GLNet, tmp_path: Path) -> None:
    path = tmp_path / "good.onnx"
    export_onnx(tiny, path, OnnxExportOptions(dynamic="batch", input_size=(TINY_SIZE, TINY_SIZE)))
    proto = onnx.load(path)
    # Change one weight: the largest initializer, one element.
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(init).copy()
    array.flat[0] += 5.0
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, bad)
    report = verify_onnx(bad, tiny)
    assert not report.passed
    assert any("max rel error" in f for r in report.results for f in r.failures)


def test_interrupted_export_leaves_nothing_behind(tiny: glnet.GLNet, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.onnx"
    export_onnx(tiny, path, OnnxExportOptions(dynamic="none", input_size=(TINY_SIZE, TINY_SIZE), simplify=False))
    good = path.read_bytes()

    def interrupted_save(proto: onnx.ModelProto, target: Path, **_: object) -> None:
        Path(target).write_bytes(proto.SerializeToString()[:1000])  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny, path, OnnxExportOptions(dynamic="batch", input_size=(TINY_SIZE, TINY_SIZE), simplify=False))
    assert sorted(tmp_path.iterdir()) == [path], "no temporary file left"
    assert path.read_bytes() == good, "the earlier good file is untouched"


def test_failed_simplification_keeps_the_graph_and_says_why(tiny: glnet.GLNet, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxsim

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    result = export_onnx(tiny, tmp_path / "m.onnx", OnnxExportOptions(input_size=(TINY_SIZE, TINY_SIZE)))
    assert not result.simplified
    assert result.nodes_final < result.nodes_exported  # the onnxscript optimizer still ran
    assert any("simulated onnxsim crash" in n for n in result.notes)
    assert verify_onnx(result.path, tiny).passed


def test_failed_optimizer_keeps_the_graph_and_says_why(tiny: glnet.GLNet, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxscript.optimizer

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("simulated optimizer crash")

    monkeypatch.setattr(onnxscript.optimizer, "optimize", broken)
    result = export_onnx(tiny, tmp_path / "m.onnx", OnnxExportOptions(input_size=(TINY_SIZE, TINY_SIZE)))
    assert result.simplified and any("simulated optimizer crash" in n for n in result.notes)
    assert verify_onnx(result.path, tiny).passed


def test_written_artifacts_get_the_usual_file_mode(tmp_path: Path) -> None:
    # Written through private temporary files (mkstemp makes them 0600), artifacts must
    # still be readable by a serving process running as another user, as any new file is.
    with atomic_outputs(tmp_path / "a.onnx", tmp_path / "a.json") as temps:
        for temp in temps:
            temp.write_bytes(b"x")
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("a.onnx", "a.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask
