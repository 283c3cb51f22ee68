"""The measurement scripts under experiments/ (not packaged): the logic they report with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from experiments.int8 import TARGETS, baseline


def test_int8_ratios_pair_each_candidate_with_the_float_file_it_replaces() -> None:
    """experiments.int8: an IR's ratio is to the bf16 IR run the same way (its @f32 run for @f32
    candidates), an onnxruntime file's to the portable ONNX, and every target names a pair."""
    assert baseline("openvino int8, depthwise float") == "openvino bf16"
    assert baseline("openvino int8, depthwise float @f32") == "openvino bf16 @f32"
    assert baseline("onnxruntime int8") == baseline("tensorrt q/dq in onnxruntime") == "onnxruntime portable"
    assert all(baseline(candidate) == base for candidate, base, _, _ in TARGETS)


# --- experiments.device_check: the TensorRT path on a GPU machine; here only its stop, its
# budget and its wiring can run (no TensorRT, no GPU), with fakes for the build, verify and bench.

def test_device_check_stops_cleanly_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from artifacts.backends import tensorrt_available
    from experiments import device_check

    if tensorrt_available():
        pytest.skip("TensorRT is installed here")
    out = tmp_path / "check.json"
    assert device_check.main(["--json", str(out)]) == 2
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("device check skipped: TensorRT is not installed")
    data = json.loads(out.read_text())
    assert data["schema"] == device_check.SCHEMA and data["status"] == "skipped" and data["steps"] == []
    assert "TensorRT" in data["reason"] and data["budget_s"] == 450


def test_device_check_stops_cleanly_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from experiments import device_check

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(device_check, "require_tensorrt", lambda: "10.3.0.30")  # as on a machine that has it
    assert device_check.main(["--json", str(tmp_path / "c.json")]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["status"] == "skipped" and data["tensorrt"] == "10.3.0.30"


def test_device_check_budget_dependencies_and_failures(tmp_path: Path) -> None:
    from experiments.device_check import Run, StepFailed

    now = [0.0]
    run = Run(100.0, tmp_path / "r.json", clock=lambda: now[0])
    calls: list[str] = []

    def fails() -> None:
        raise ValueError("no such layer")

    def mismatch() -> None:
        raise StepFailed("fp16 does not match", {"max_rel": 0.5})

    ok = run.step("export", lambda: calls.append("export") or {"nodes": 3}, needs_s=10)
    bad = run.step("build", fails, needs_s=10, after=ok)
    after_bad = run.step("verify", lambda: calls.append("verify"), after=bad)
    kept = run.step("verify other", mismatch)
    now[0] = 95.0
    late = run.step("bench", lambda: calls.append("bench"), needs_s=10)
    assert calls == ["export"]  # neither the dependent nor the late step ran
    assert [s.status for s in run.steps] == ["ok", "failed", "skipped", "failed", "skipped"]
    assert bad.error == "no such layer" and after_bad.error == "needs build, which was failed"
    assert kept.result == {"max_rel": 0.5} and "5 s of 100 s left" in late.error
    assert run.finish("complete") == 1
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["status"] == "complete" and [s["name"] for s in data["steps"]][-1] == "bench"
    assert Run(1.0, tmp_path / "s.json").finish("complete") == 0


@dataclass
class _Manifest:
    profiles: list[Any]
    metadata: dict[str, str]


@dataclass
class _Built:
    path: Path
    manifest: _Manifest


@dataclass
class _Shape:
    shape: tuple[int, ...]
    passed: bool
    failures: list[str]


@dataclass
class _Report:
    results: list[_Shape]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)


@dataclass
class _Cell:
    batch: int
    error: str = ""


@dataclass
class _Bench:
    results: list[_Cell]


def test_device_check_runs_every_step_of_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring, with the format table's build, the verification and the bench replaced by fakes
    (the real ones need TensorRT and a GPU): which steps run in which order, with what."""
    import bench.runner
    import export.formats
    import glnet.testing
    import verification.artifact
    from artifacts.engine_manifest import Profile
    from artifacts.metadata import ArtifactMetadata
    from experiments import device_check
    from experiments.device_check import Run, check_model

    profile = Profile("input", (1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))
    built: list[tuple[str, dict[str, Any]]] = []

    def build(fmt: str, source: Any, output: Path, **options: Any) -> Any:
        built.append((fmt, options))
        return _Built(output, _Manifest([profile], ArtifactMetadata("glnet_tiny", 1000).to_props()))

    def verify(engine: Path, reference: Path, options: Any) -> _Report:
        bad = "int8" in engine.name  # the int8 engine is off
        return _Report([_Shape(s, not bad, ["cosine 0.9 < 0.99"] if bad else []) for s in options.shapes])

    monkeypatch.setattr(export.formats, "build", build)
    monkeypatch.setattr(glnet.testing, "seeded_model", lambda name: name)
    monkeypatch.setattr(verification.artifact, "verify_artifact", verify)
    monkeypatch.setattr(bench.runner, "bench_artifact", lambda path, options: _Bench([_Cell(1), _Cell(8)]))
    monkeypatch.setattr(device_check, "compare_graphs", lambda engine: {"batch 1": "compared"})
    run = Run(450.0, tmp_path / "r.json")
    check_model(run, "glnet_tiny", tmp_path, tmp_path / "calib", tmp_path / "timing.cache")
    names = [s.name for s in run.steps]
    assert names[:6] == ["glnet_tiny export", "glnet_tiny fp32 build", "glnet_tiny fp32 verify",
                         "glnet_tiny fp32 bench", "glnet_tiny fp32 CUDA graph on/off", "glnet_tiny fp16 build"]
    assert len(names) == 1 + 3 * 4
    graphs = [s for s in run.steps if "CUDA graph" in s.name]
    # compared on and off for every engine (faked here)
    assert len(graphs) == 3 and all(s.status == "ok" and s.result == {"batch 1": "compared"} for s in graphs)
    assert [f for f, _ in built] == ["onnxruntime", "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8"]
    assert built[1][1]["tf32"] is False and "tf32" not in built[2][1] and "tf32" not in built[3][1]
    assert built[3][1]["calib"] == tmp_path / "calib" and built[1][1]["calib"] is None
    assert all(o.get("timing_cache") == tmp_path / "timing.cache" for _, o in built[1:])
    failed = [s for s in run.steps if s.status == "failed"]
    assert [s.name for s in failed] == ["glnet_tiny int8 verify"] and "1x3x224x224: cosine" in failed[0].error
    verified = run.steps[2].result
    assert [r.shape for r in verified.results] == [(1, 3, 224, 224), (3, 3, 224, 224)]  # within the profile


def test_device_check_watchdog_ends_a_step_that_overruns(tmp_path: Path) -> None:
    """A TensorRT build cannot be interrupted: the watchdog writes what was done and ends the process."""
    import subprocess
    import sys

    out = tmp_path / "w.json"
    code = ("import time\nfrom pathlib import Path\nfrom experiments.device_check import Run, watchdog\n"
            f"run = Run(100.0, Path({str(out)!r}))\nrun.step('done', lambda: 1)\n"
            "watchdog(run, 0.5)\nrun.step('hangs', lambda: time.sleep(60))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 3, done.stderr
    data = json.loads(out.read_text())
    assert data["status"] == "stopped" and "still running hangs" in data["reason"]
    assert [(s["name"], s["status"]) for s in data["steps"]] == [("done", "ok"), ("hangs", "failed")]
    assert "stopped by the watchdog" in data["steps"][1]["error"]


def test_int8_budget_halves_are_disjoint_class_balanced_and_cover_every_image(tmp_path: Path) -> None:
    """experiments.int8_budget: --max-drop chooses on half A; B, the honest check, shares no image with it."""
    import numpy as np

    from artifacts.labelled import read_labelled
    from artifacts.labels import labels_for
    from experiments.int8_budget import write_halves

    labels = np.repeat(np.arange(10), 4)  # 4 images of each class
    images = np.zeros((len(labels), 8, 8, 3), dtype=np.uint8)
    folder, files = write_halves(images, labels, tmp_path)
    halves = {half: read_labelled(folder, files[half], labels_for("", 10)) for half in ("A", "B")}
    assert not set(halves["A"].paths) & set(halves["B"].paths)
    assert len(halves["A"]) + len(halves["B"]) == len(labels)
    assert halves["A"].counts() == halves["B"].counts() == {c: 2 for c in range(10)}


def test_int8_budget_scores_each_file_as_the_accuracy_command_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """experiments.int8_budget.score goes through verification.accuracy.score_runners: per half,
    each file's top-1 and its paired change from the fp32 ONNX, which for the fp32 ONNX itself
    (left out by score_runners) is its hits paired with themselves. Fake runners, so that
    the expected figures come from their logits directly; IRs are asked for f32."""
    import numpy as np

    import experiments.int8_budget as experiment
    from artifacts.labelled import iter_batches, read_labelled
    from artifacts.labels import labels_for
    from artifacts.metadata import ArtifactMetadata
    from artifacts.scoring import accuracy, hits_at, paired_change, top_k
    from runtimes.base import Runner, TensorSpec

    meta = ArtifactMetadata(model="glnet_tiny", num_classes=10, input_size=(32, 32), labels="")

    class Pixels(Runner):  # ten "logits" from the pixels at `offset`: each file errs its own way
        backend = "fake"

        def __init__(self, offset: int) -> None:
            super().__init__()
            self.inputs = [TensorSpec("input", ("batch", 3, 32, 32), "float32")]
            self.metadata, self.offset = meta, offset

        def _infer(self, x: np.ndarray) -> np.ndarray:
            return x.reshape(len(x), -1)[:, self.offset:self.offset + 10]

    files = {"fp32 onnx": tmp_path / "fp32.onnx", "int8 ir": tmp_path / "int8.xml", "int8 ort": tmp_path / "int8.onnx"}
    offsets = {files["fp32 onnx"]: 0, files["int8 ir"]: 3, files["int8 ort"]: 40}
    asked: dict[str, str | None] = {}

    def load(path: Path, precision: str | None = None) -> Runner:
        asked[path.suffix] = precision
        return Pixels(offsets[path])

    monkeypatch.setattr(experiment.runtimes, "load", load)
    labels = np.repeat(np.arange(10), 12)  # two batches of 50 and one of 10 per half
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    folder, csvs = experiment.write_halves(images, labels, tmp_path)
    halves = {half: read_labelled(folder, csv, labels_for("", 10)) for half, csv in csvs.items()}
    table = experiment.score(files, halves)
    assert asked == {".onnx": None, ".xml": "fp32"}
    for half, labelled in halves.items():
        batches = list(iter_batches(labelled, meta, 50))
        y = np.concatenate([b.labels for b in batches])
        hits = {name: hits_at(top_k(np.concatenate([Pixels(offsets[path]).infer(b.images) for b in batches]), 1), y, 1)
                for name, path in files.items()}
        for name in files:
            assert table[name][half] == {"top1": accuracy(hits[name]),
                                         "change_from_fp32": paired_change(hits[name], hits["fp32 onnx"])}
        assert table["fp32 onnx"][half]["change_from_fp32"].change == 0.0
        assert table["int8 ort"][half]["change_from_fp32"].lost > 0  # the files do differ
