"""The edge figures without a real artifact: energy meters on a fake sysfs tree and on
recorded tegrastats output, the fresh-process measurement with a fake TensorRT runner,
the JSON keys, and `bench compare` against a result file written before these existed.

The real child process on a real file is tested in test_bench.py (its ONNX and IR).
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from bench import edge, energy
from bench.energy import EnergyMeter, EnergyReading, NoMeter, RaplMeter, TegrastatsMeter
from bench.report import SCHEMA, BenchReport, compare, rows, to_dict
from bench.runner import BenchOptions, Budget, bench_runner
from bench.sysinfo import collect_device_info
from glnet_export.cli import app
from runtimes.base import Runner, TensorSpec

TEGRASTATS = Path(__file__).resolve().parent / "data" / "tegrastats"


def _lines(name: str) -> list[str]:
    return [line for line in (TEGRASTATS / name).read_text().splitlines() if line and not line.startswith("#")]


def _zone(root: Path, name: str, label: str, uj: int, max_uj: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone / "energy_uj"


def test_rapl_sums_the_packages_and_unwraps_a_counter(tmp_path: Path) -> None:
    pkg0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 262_143_328_850)
    pkg1 = _zone(tmp_path, "intel-rapl:1", "package-1", 262_143_000_000, 262_143_328_850)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5, 10**9)  # a sub-zone, inside package-0
    _zone(tmp_path, "intel-rapl:2", "psys", 7, 10**9)  # the platform: contains the packages
    clock = iter([10.0, 12.0])
    meter = energy.find_meter(tmp_path)
    assert isinstance(meter, RaplMeter) and meter.source == "RAPL package-0+package-1"
    meter = RaplMeter(meter.domains, clock=lambda: next(clock))
    meter.start()
    pkg0.write_text("3500000\n")  # +2.5 J
    pkg1.write_text("171150\n")  # wrapped: 328_850 to the top, then 171_150: +0.5 J
    reading = meter.stop()
    assert reading.energy_mj == pytest.approx(3000.0) and reading.seconds == 2.0
    assert reading.avg_power_w == pytest.approx(1.5) and reading.per_image(30) == pytest.approx(100.0)


def test_rapl_readable_by_root_only_and_no_meter_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 1, 10**9)
    read_text = Path.read_text

    def root_only(self: Path, *args: object, **kwargs: object) -> str:
        if self == counter:
            raise PermissionError(13, "Permission denied")
        return read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", root_only)
    meter = energy.find_meter(tmp_path / "powercap", tegrastats="no-such-tegrastats")
    assert isinstance(meter, NoMeter) and "readable by root only" in meter.reason
    meter.start()
    reading = meter.stop()
    assert reading.energy_mj is None and reading.avg_power_w is None and reading.per_image(5) is None
    assert "root" in reading.note and "no tegrastats" in reading.note

    meter = energy.find_meter(tmp_path / "empty", tegrastats="no-such-tegrastats")  # this machine, probably
    assert isinstance(meter, NoMeter) and meter.reason.startswith("no RAPL counters")


@pytest.mark.parametrize(("name", "rail", "first_mw"), [
    ("agx_orin_jetpack6.txt", "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0", 2798 + 799 + 3315),  # no input rail: the sum
    ("vdd_in_jetpack5.txt", "VDD_IN", 5542),
    ("nano_jetpack4.txt", "POM_5V_IN", 920),
])
def test_tegrastats_lines_recorded_on_jetsons(name: str, rail: str, first_mw: int) -> None:
    lines = _lines(name)
    totals = [energy.total_power(line) for line in lines]
    assert all(t is not None and t[0] == rail for t in totals)
    assert totals[0] == (rail, first_mw)
    # RAM, SWAP, IRAM, EMC and the temperatures are not rails.
    assert set(energy.rail_powers(lines[0])) <= {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC", "VDD_GPU_SOC", "VDD_CPU_CV",
                                                 "VIN_SYS_5V0", "POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
    assert energy.total_power("RAM 2274/6834MB (lfb 27x4MB) SWAP 542/3417MB") is None


def test_window_energy_from_the_samples_in_and_just_after_the_window() -> None:
    mw = [t[1] for t in map(energy.total_power, _lines("vdd_in_jetpack5.txt")) if t]  # 5542 ... 13353 mW
    samples = [(0.1 * (i + 1), p) for i, p in enumerate(mw)]  # one line every 100 ms
    # Timed runs from 0.25 s to 0.45 s: the samples at 0.3 and 0.4, and the one at 0.5 that covers 0.4-0.5.
    got = energy.window_energy(samples, 0.25, 0.45, 0.1)
    assert got is not None and got[1] == 3
    assert got[0] == pytest.approx(np.mean(mw[2:5]) * 0.2)
    assert energy.window_energy(samples, 5.0, 6.0, 0.1) is None


def test_tegrastats_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in that prints recorded lines in a loop, as tegrastats does, until stopped.
    (tmp_path / "lines.txt").write_text("\n".join(_lines("vdd_in_jetpack5.txt")) + "\n")
    script = tmp_path / "tegrastats"
    script.write_text(f"#!/bin/sh\nwhile true; do while read -r l; do echo \"$l\"; sleep 0.02; done "
                      f"< '{tmp_path / 'lines.txt'}'; done\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = energy.find_meter(tmp_path / "no-powercap")
    assert isinstance(found, TegrastatsMeter) and found.command == ["tegrastats", "--interval", "100"]
    meter = TegrastatsMeter(["tegrastats"], interval=0.02)
    meter.start()
    time.sleep(0.15)
    reading = meter.stop()
    assert reading.energy_mj is not None and reading.source == "tegrastats VDD_IN", reading
    mw = [t[1] for t in map(energy.total_power, _lines("vdd_in_jetpack5.txt")) if t]
    assert min(mw) / 1e3 <= reading.avg_power_w <= max(mw) / 1e3  # type: ignore[operator]
    assert meter._process is None, "the background process is stopped with the window"

    missing = TegrastatsMeter(["no-such-tegrastats"])
    missing.start()
    assert missing.stop().energy_mj is None and "did not start" in missing.stop().note


class FakeRunner(Runner):
    backend = "fake"

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.inputs = [TensorSpec("input", ("batch", 3, "h", "w"), "float32")]
        self.clock = clock

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.clock[0] += 0.01
        return np.zeros((x.shape[0], 10), np.float32)


class ScriptedMeter(EnergyMeter):
    source = "scripted"

    def __init__(self, mj: float) -> None:
        self.mj, self.started = mj, 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> EnergyReading:
        return EnergyReading(self.mj, 2.0, self.source)


def test_energy_per_image_and_the_json_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    meter = ScriptedMeter(800.0)
    options = BenchOptions(batches=(2, 1), sizes=((64, 64),), warmup=Budget(count=1), measure=Budget(count=4))
    bench = bench_runner(FakeRunner(clock), options, "fake", meter=meter)
    assert meter.started == 2, "one window per (batch, size)"
    b2, b1 = bench.results
    assert b2.energy_mj_per_image == pytest.approx(800 / (2 * 4)) and b1.energy_mj_per_image == pytest.approx(200)
    assert b2.avg_power_w == pytest.approx(0.4) and b2.energy_source == "scripted"
    assert bench.energy_mj_per_image == b2.energy_mj_per_image, "the artifact's: its first measured cell"
    data = to_dict(BenchReport("bench", collect_device_info(idle_sample_s=0), {}, [bench]))
    art = data["artifacts"][0]
    assert {"load_seconds", "first_inference_ms", "peak_rss_mb", "baseline_rss_mb", "file_mb",
            "energy_mj_per_image", "avg_power_w", "gpu_memory_mb", "not_measured", "edge_shape"} <= set(art)
    assert art["file_mb"] is None and art["load_seconds"] is None  # no file: nothing to load in a fresh process
    assert {"energy_mj_per_image", "avg_power_w", "energy_note"} <= set(art["results"][0])


def test_a_format_row_keeps_its_edge_figures_once_and_writes_them_flat() -> None:
    """`bench --model`'s rows hold the fresh process's figures once (`FormatRow.edge`); reports
    keep the flat keys they always had, where they had them, and derive the file's MiB."""
    from bench.runner import ArtifactBench
    from bench.suite import FormatRow

    figures = edge.EdgeFigures([1, 3, 64, 64], load_seconds=0.25, first_inference_ms=2.5, baseline_rss_mb=57.0,
                               peak_rss_mb=74.0, gpu_memory_mb=12.0)
    row = FormatRow("onnxruntime", "ONNX on onnxruntime", path="m.onnx", size_bytes=3 << 20, edge=figures)
    data = row.to_json()
    assert list(data) == ["format", "description", "status", "reason", "path", "size_bytes", "precision", "export_s",
                          "max_abs", "max_rel", "top1", "photo_samples", "p50_ms", "throughput", "load_seconds",
                          "first_inference_ms", "peak_rss_mb", "baseline_rss_mb", "accuracy"]  # as reports had them
    assert (data["load_seconds"], data["first_inference_ms"], data["peak_rss_mb"], data["baseline_rss_mb"]) == (
        0.25, 2.5, 74.0, 57.0)
    assert row.figure("peak_rss_mb") == 74.0
    pytorch = FormatRow("pytorch", "eager").to_json()  # no file: not measured
    assert pytorch["load_seconds"] is None and pytorch["peak_rss_mb"] is None and "edge" not in pytorch
    assert ArtifactBench("m.onnx", "m.onnx", "ab", 3 << 20, "onnxruntime", "fp32", "m", []).file_mb == 3.0
    assert ArtifactBench("pytorch", "", "", 0, "pytorch", "fp32", "m", []).file_mb is None


class FakeTensorRT(Runner):
    """What the fresh process asks of a TensorRT runner: prepare, infer, its context's memory."""

    backend = "tensorrt"

    def __init__(self, engine: SimpleNamespace) -> None:
        super().__init__()
        self.inputs = [TensorSpec("input", (1, 3, 64, 64), "float32")]
        self._engine = engine

    device_memory_bytes = property(lambda self: self._engine.device_memory_size_v2)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((1, 10), np.float32)


def test_fresh_process_figures_with_a_fake_tensorrt_runner(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    free = iter([8 << 30, (8 << 30) - (300 << 20)])  # 300 MiB taken by loading and running the engine

    def load(path: str, **_kw: object) -> Runner:
        status.write_text("VmHWM:\t  512000 kB\nVmRSS:\t  400000 kB\n")  # the engine's host side
        return FakeTensorRT(SimpleNamespace(device_memory_size_v2=64 << 20))

    figures = edge.measure(tmp_path / "m.engine", (1, 3, 64, 64), "cuda", runs=2, load=load,
                           prepare_backend=lambda _b: None, gpu_free=lambda _d: next(free), status=status)
    assert figures.baseline_rss_mb == 200.0 and figures.peak_rss_mb == 500.0
    assert figures.gpu_memory_mb == 300.0 and figures.gpu_context_mb == 64.0
    assert figures.load_seconds is not None and figures.first_inference_ms is not None and figures.warm_ms
    assert edge.memory_kib(status) == {"VmHWM": 512000, "VmRSS": 400000}


def test_tensorrt_runner_reports_its_context_memory() -> None:
    from runtimes.tensorrt import TensorRTRunner

    runner = object.__new__(TensorRTRunner)  # the property reads the engine only: no TensorRT here
    runner._engine = SimpleNamespace(device_memory_size_v2=123 << 20, device_memory_size=999)  # type: ignore[attr-defined]
    assert runner.device_memory_bytes == 123 << 20
    runner._engine = SimpleNamespace(device_memory_size=77)  # type: ignore[attr-defined]  # before TensorRT 10.1
    assert runner.device_memory_bytes == 77


def _result_file(path: Path, artifacts: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"schema": SCHEMA, "schema_version": 1, "kind": "bench", "device": {},
                                "artifacts": artifacts}))
    return path


def test_compare_with_a_result_file_from_before_the_edge_figures(tmp_path: Path) -> None:
    latency = {"runs": 5, "cold_ms": 9.0, "mean": 4.0, "std": 0.1, "min": 3.9, "p50": 4.0, "p90": 4.1, "p95": 4.2,
               "p99": 4.3, "max": 4.4}
    cell = {"batch": 1, "height": 224, "width": 224, "mode": "latency", "latency": latency, "throughput": 250.0}
    old = {"name": "m.onnx", "path": "m.onnx", "sha256": "ab", "precision": "fp32", "results": [cell]}
    new = dict(old, results=[dict(cell, energy_mj_per_image=41.5, avg_power_w=10.4)], file_mb=103.0,
               load_seconds=0.8, first_inference_ms=120.0, peak_rss_mb=480.0, baseline_rss_mb=60.0)
    a, b = _result_file(tmp_path / "old.json", [old]), _result_file(tmp_path / "new.json", [new])
    old_row, new_row = rows(json.loads(a.read_text()))[0], rows(json.loads(b.read_text()))[0]
    assert old_row["peak_rss_mb"] is None and old_row["energy_mj_per_image"] is None
    assert new_row["peak_rss_mb"] == 480.0 and new_row["energy_mj_per_image"] == 41.5
    result = compare(json.loads(a.read_text()), json.loads(b.read_text()))
    assert len(result.rows) == 1 and result.rows[0].p50_ratio == pytest.approx(1.0)
    (row,) = result.edge
    assert row.a["load_seconds"] is None and row.b["load_seconds"] == 0.8 and row.b["file_mb"] == 103.0
    assert compare(json.loads(a.read_text()), json.loads(a.read_text())).edge == [], "two old files: no edge table"

    shown = CliRunner().invoke(app, ["bench", "compare", str(a), str(b)])
    assert shown.exit_code == 0, shown.output
    assert "Per artifact, A -> B" in shown.output and "- -> 480" in shown.output
