"""Shared fixtures. Heavy artifacts are built once per session and reused by the tests."""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
import torch

import glnet
from artifacts.photos import sample_photo_paths
from glnet.testing import seeded_model

if TYPE_CHECKING:
    from helpers_labelled import LabelledFolder
    from helpers_trained import TrainedDigits

# Keep timings and thread pools predictable: the cores are shared by the pytest-xdist
# workers (2 cores, 2 workers on CI: one thread each), or all ours when run alone.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // _WORKERS)))

DATA = Path(__file__).resolve().parent / "data"


# pytest-xdist runs each module on one worker (`--dist loadgroup`, a group per module), so
# its module fixtures are built once. Modules that export the same seeded model with the
# same options need not share a worker: the session's trace cache (below) keeps each trace
# on disk for both workers.


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker more than cores. Many tests wait rather than compute for part of
    their time (Ray starting, a child process loading a runtime, a worker waiting on the
    other's trace or training lock), and a third worker fills those gaps: the whole suite
    took 438 s with 3 workers against about 480 s with 2 on this 2-core machine."""
    return (os.cpu_count() or 1) + 1


# The longest groups start first (longest-processing-time-first scheduling): a long one
# started last would run alone at the end while the other worker idles. Seconds of one
# worker on the 2-core CI machine, measured with --durations=0; modules not named are short.
LONGEST_FIRST = ["tests/export/test_full_size.py", "tests/export/test_onnx_export.py",
                 "tests/export/test_openvino.py", "tests/bench/test_bench.py", "tests/cli/test_cli_verify_predict.py",
                 "tests/cli/test_onnx_command.py", "tests/export/test_onnxruntime_target.py",
                 "tests/serving/test_serving.py", "tests/test_static_checks.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {}
    for item in items:
        groups[item.nodeid] = item.nodeid.split("::")[0]  # its module
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    rank = {group: i for i, group in enumerate(LONGEST_FIRST)}
    # A stable sort: each module's tests stay together and in their order.
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))


@pytest.fixture(scope="session")
def reference_layout() -> dict[str, dict[str, list[int]]]:
    """The authors' checkpoint layout (copied from shared/reference into tests/data)."""
    return json.loads((DATA / "glnet_checkpoint_layout.json").read_text())


@pytest.fixture(scope="session")
def tiny_model() -> glnet.GLNet:
    """glnet_tiny with its weights moved away from their initial values (`glnet.testing`),
    in eval mode: the model the feature tests export and compare with (the Predictor and
    serving tests use glnet_tiny seed 3, whose traces the session shares with
    test_onnx_export). Shared, so a test must not change it."""
    return seeded_model("glnet_tiny", seed=11)


def _fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha1(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session", autouse=True)
def _one_trace_per_model_and_options(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The dynamo trace is most of an export's time (8-25 s for glnet_tiny, a minute for
    glnet_4g). The same weights traced with the same options give the same graph, so a
    session traces each once and every export gets a copy of it; everything after the trace
    (passes, simplification, checks, metadata, the atomic write) runs each time.

    Under pytest-xdist the traces are kept on disk in the folder the workers share, behind
    a lock per trace, so that two workers needing the same graph trace it once between
    them. A test that patches what the trace uses (the deploy switch, torch.onnx.export)
    gets its own trace: shared like the others when the stand-in is a module-level function
    (its name says what it does in every worker, e.g. `helpers.reference_form`), kept in
    this process only when it is a lambda or a local function."""
    from filelock import FileLock  # torch's own dependency

    import export.onnx as exporter

    trace = exporter.trace_to_onnx
    to_deploy, torch_export = glnet.GLNet.to_deploy, torch.onnx.export
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each worker's own
    shared = shared / "onnx-traces"
    shared.mkdir(exist_ok=True)
    traces: dict[tuple[object, ...], onnx.ModelProto] = {}

    def traced(model: glnet.GLNet, options: exporter.OnnxExportOptions) -> onnx.ModelProto:
        fields = (_fingerprint(model), options.opset, options.input_size, options.batch, options.dynamic,
                  options.features, options.slot_blocks)
        stand_ins = [f for f, real in ((glnet.GLNet.to_deploy, to_deploy), (torch.onnx.export, torch_export))
                     if f is not real]
        if any("<" in getattr(f, "__qualname__", "<") for f in stand_ins):  # a mock has no name either
            key = (*fields, glnet.GLNet.to_deploy, torch.onnx.export)  # a lambda's trace: this process only
            if key not in traces:
                traces[key] = trace(model, options)
            return traces[key]
        fields = (*fields, *(f"{f.__module__}.{f.__qualname__}" for f in stand_ins))
        if fields not in traces:
            name = hashlib.sha1(repr(fields).encode()).hexdigest()
            file = shared / f"{name}.onnx"
            with FileLock(str(file) + ".lock"):
                if file.is_file():
                    traces[fields] = onnx.load_model_from_string(file.read_bytes())
                else:
                    traces[fields] = trace(model, options)
                    partial = file.with_suffix(".partial")
                    partial.write_bytes(traces[fields].SerializeToString())
                    partial.replace(file)
        return traces[fields]

    def cached(model: glnet.GLNet, options: exporter.OnnxExportOptions) -> onnx.ModelProto:
        proto = onnx.ModelProto()
        proto.CopyFrom(traced(model, options))
        return proto

    patch = pytest.MonkeyPatch()
    patch.setattr(exporter, "trace_to_onnx", cached)
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _seeded_globals() -> None:
    """Every test starts from the same global random state, whatever ran before it (in
    this process or, under pytest-xdist, in another worker). Fixtures that make models
    seed their own generators (`glnet.testing.seeded_model`)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrainedDigits:
    """glnet_tiny trained on scikit-learn's digits (`helpers_trained`): a model whose accuracy
    means something, >= 90% on its 200 held-out digits. Trained once for every xdist worker
    and later run: the weights are kept in pytest's cache, keyed by a hash of the code that
    makes them, under a file lock (training takes ~37 s of a core). Shared: do not change it."""
    from helpers_trained import load_or_train

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = cache.mkdir("glnet-digits") if cache is not None else tmp_path_factory.getbasetemp().parent / "digits"
    trained = load_or_train(folder)
    assert trained.eval_accuracy >= 0.90, f"the digits model reaches only {trained.eval_accuracy:.1%} held out"
    return trained


@pytest.fixture(scope="session")
def digits_onnx(digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model exported once per session (32 x 32, dynamic batch), its metadata naming
    `digits.checkpoint` as its weights. Shared: convert it, do not change it."""
    from export.onnx import OnnxExportOptions, export_onnx
    from glnet.checkpoint import checkpoint_sha256

    assert digits.checkpoint is not None
    path = tmp_path_factory.mktemp("digits-onnx") / "digits.onnx"
    export_onnx(digits.model, path, OnnxExportOptions(input_size=(32, 32), dynamic="batch"),
                checkpoint_sha256=checkpoint_sha256(digits.checkpoint))
    return path


@pytest.fixture(scope="session")
def digits_labelled(digits: TrainedDigits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LabelledFolder]:
    """The 200 held-out digits written in every labelled layout (`helpers_labelled`), by name."""
    from helpers_labelled import write_layouts

    return write_layouts(digits.eval_images, digits.eval_labels, tmp_path_factory.mktemp("digits-labelled"))


@pytest.fixture(scope="session")
def tiny_dynamic_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`helpers.shared_tiny` exported once per worker: dynamic batch and size, traced at
    `helpers.TINY_SIZE`, verified against PyTorch by the export itself. The file that the
    OpenVINO, residual-fold, keep-float, precision-debugger and bench tests convert, time and
    plant faults in: each copies it (`helpers.copy_of`) into its own folder, so files written
    beside it stay its own."""
    from helpers import TINY_SIZE, shared_tiny

    from export.onnx import OnnxExportOptions, export_onnx

    path = tmp_path_factory.mktemp("tiny-dynamic") / "tiny.onnx"
    export_onnx(shared_tiny(), path, OnnxExportOptions(input_size=(TINY_SIZE, TINY_SIZE), dynamic="shape"))
    return path


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The sample photographs (scikit-image and scikit-learn ship 10).

    scikit-image is a dependency and scikit-learn a dev extra, so fewer photographs is a
    broken install: a failure, not a reason to skip the checks on real photographs."""
    paths = sample_photo_paths()
    assert len(paths) >= 4, f"only {len(paths)} sample photographs found: are scikit-image and scikit-learn installed?"
    return paths
