"""The bench family (`bench ARTIFACT...`, `bench --model M`, `bench compare`): statistics,
result files, device information, per-layer tables, the plot and the commands end to end,
on glnet_tiny.

No test bounds a wall-clock time (the machine is shared): timings are checked for
consistency (order of percentiles, counts, cold run apart), and the statistics for
exactness on scripted timings from a fake clock.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import copy_of
from typer.testing import CliRunner

from artifacts.backends import BackendUnavailableError
from artifacts.errors import OptionError
from bench import sysinfo
from bench.plot import PlotError, plot_latency
from bench.profile import profile_layers
from bench.report import CSV_COLUMNS, SCHEMA, BenchReport, ReportError, compare, load_report, write_csv, write_json
from bench.runner import BenchOptions, Budget, bench_artifact, bench_runner
from glnet_export.cli import app
from runtimes.base import Runner, TensorSpec

TINY = "glnet_tiny"
# No fresh process per artifact (bench.edge) unless a test is about it: a second or so each.
FAST = dict(warmup=Budget(count=1), measure=Budget(count=3), threads=2, edge=False)


@pytest.fixture(scope="module")
def artifacts(tiny_dynamic_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A dynamic-shape tiny ONNX file and, when OpenVINO is installed, its IR (or why not)."""
    folder = tmp_path_factory.mktemp("bench")
    found: dict[str, Path | str] = {"onnx": copy_of(tiny_dynamic_onnx, folder)}  # `helpers.shared_tiny`
    try:
        import openvino  # noqa: F401

        from export.openvino import convert_openvino
    except ImportError as exc:
        found["openvino_missing"] = f"OpenVINO parts not importable here ({exc}): pip install 'glnet-export[openvino]'"
    else:
        found["xml"] = convert_openvino(found["onnx"], folder / "tiny.xml").xml
    return found


def _xml(artifacts: dict[str, Path | str]) -> Path:
    if "xml" not in artifacts:
        pytest.skip(str(artifacts["openvino_missing"]))
    return Path(artifacts["xml"])


@pytest.fixture(scope="module")
def onnx_bench(artifacts: dict[str, Path | str]):  # type: ignore[no-untyped-def]
    options = BenchOptions(batches=(1, 2), sizes=((64, 64), (96, 96)), **dict(FAST, edge=True))  # type: ignore[arg-type]
    return bench_artifact(artifacts["onnx"], options)


class FakeRunner(Runner):
    """Each inference advances a fake clock by the next scripted duration (ms)."""

    backend = "fake"

    def __init__(self, durations: list[float], clock: list[float], shape: tuple = ("batch", 3, "h", "w"),
                 interrupt_at: int | None = None) -> None:
        super().__init__()
        self.inputs = [TensorSpec("input", shape, "float32")]
        self.durations, self.clock, self.interrupt_at = durations, clock, interrupt_at
        self.seen: list[int] = []

    def _infer(self, x: np.ndarray) -> np.ndarray:
        if len(self.seen) == self.interrupt_at:
            raise KeyboardInterrupt
        self.clock[0] += self.durations[len(self.seen)] / 1e3
        self.seen.append(id(x))
        return np.zeros((x.shape[0], 10), np.float32)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    return clock


def test_statistics_are_numpys_on_the_recorded_timings(fake_clock: list[float]) -> None:
    rng = np.random.default_rng(0)
    durations = list(rng.lognormal(3, 0.4, 400))
    runner = FakeRunner(durations, fake_clock)
    options = BenchOptions(warmup=Budget(count=5), measure=Budget(count=200), sizes=((64, 64),))
    result = bench_runner(runner, options, "fake").results[0]
    warm = np.array(durations[6:206])  # the cold run and 5 warm-up runs are not in the statistics
    s = result.latency
    assert s is not None and s.runs == 200 and s.cold_ms == pytest.approx(durations[0])
    for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(s, name) == pytest.approx(np.percentile(warm, q)), name
    assert (s.mean, s.std, s.min, s.max) == pytest.approx((warm.mean(), warm.std(), warm.min(), warm.max()))
    assert result.throughput == pytest.approx(200 / (warm.sum() / 1e3))
    assert len(set(runner.seen[6:])) == options.buffers, "inputs rotate among several buffers"


def test_budget_parsing() -> None:
    assert Budget.parse("20") == Budget(count=20)
    assert Budget.parse("2.5s").seconds == 2.5 and Budget.parse("500ms").seconds == 0.5
    assert not Budget(seconds=1.0, minimum=5).reached(4, 10.0), "a time budget still needs its minimum runs"
    with pytest.raises(OptionError, match="neither"):
        Budget.parse("soon")
    # A negative or empty budget would never be reached (the run hung): refused up front.
    for text in ("-5", "-1s", "-200ms"):
        with pytest.raises(OptionError, match="cannot be negative"):
            Budget.parse(text)
    for measure, message in ((Budget(count=0), "--iters must be >= 1"), (Budget(count=-3), "--iters must be >= 1"),
                             (Budget(seconds=0.0), "--duration must be above 0")):
        with pytest.raises(OptionError, match=message):
            BenchOptions(measure=measure).validate()
    with pytest.raises(OptionError, match="--threads must be >= 1"):
        BenchOptions(threads=0).validate()


def test_fixed_axis_is_reported_per_cell_and_ctrl_c_keeps_what_was_measured(fake_clock: list[float]) -> None:
    runner = FakeRunner([1.0] * 100, fake_clock, shape=(1, 3, 64, 64))
    options = BenchOptions(batches=(1, 2), sizes=((64, 64),), warmup=Budget(count=1), measure=Budget(count=4))
    ok, fixed = bench_runner(runner, options, "fixed").results
    assert ok.latency is not None and fixed.latency is None and "fixed at 1 on axis 0" in fixed.error

    runner = FakeRunner([1.0] * 100, fake_clock, interrupt_at=5)  # cold + 1 warm-up + 3 timed runs
    bench = bench_runner(runner, BenchOptions(batches=(1, 2), sizes=((64, 64),), warmup=Budget(count=1),
                                              measure=Budget(count=10)), "fake")
    assert bench.interrupted and len(bench.results) == 1, "stops at the interrupted cell"
    assert bench.results[0].latency is not None and bench.results[0].latency.runs == 3


def test_onnxruntime_over_batches_and_sizes(onnx_bench, artifacts: dict[str, Path | str]) -> None:  # type: ignore[no-untyped-def]
    assert onnx_bench.backend == "onnxruntime" and onnx_bench.precision == "fp32" and onnx_bench.model == TINY
    assert onnx_bench.sha256 == hashlib.sha256(Path(artifacts["onnx"]).read_bytes()).hexdigest()
    assert [(r.batch, r.height) for r in onnx_bench.results] == [(1, 64), (1, 96), (2, 64), (2, 96)]
    for r in onnx_bench.results:
        s = r.latency
        assert not r.error and s is not None and s.runs == 3 and s.batch == r.batch
        assert s.min <= s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.max and s.cold_ms > 0
        assert r.throughput and r.throughput > 0 and r.streams == 1


def test_edge_figures_from_a_fresh_process(onnx_bench, artifacts: dict[str, Path | str]) -> None:  # type: ignore[no-untyped-def]
    # Load, first inference and memory of the real file, at the first batch and size benched.
    b = onnx_bench
    assert b.edge_shape == [1, 3, 64, 64] and b.file_mb == pytest.approx(Path(artifacts["onnx"]).stat().st_size / 2**20)
    assert b.load_seconds > 0 and b.first_inference_ms > 0, b.not_measured
    # The child imports numpy and onnxruntime (tens of MiB), then holds the model's weights and arena on top.
    assert 20 < b.baseline_rss_mb < b.peak_rss_mb < 2048
    assert b.gpu_memory_mb is None and "CPU" in b.not_measured["gpu_memory_mb"]
    if b.energy_mj_per_image is None:  # no readable RAPL counter or tegrastats here: said, not guessed
        assert b.not_measured["energy_mj_per_image"] and b.results[0].energy_note


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_throughput_mode(backend: str, artifacts: dict[str, Path | str]) -> None:
    path = artifacts["onnx"] if backend == "onnxruntime" else _xml(artifacts)
    options = BenchOptions(sizes=((64, 64),), mode="throughput", streams=2 if backend == "onnxruntime" else None,
                           **FAST)  # type: ignore[arg-type]
    (result,) = bench_artifact(path, options).results
    assert not result.error and result.latency is not None and result.latency.runs == 3
    assert result.streams == 2 if backend == "onnxruntime" else result.streams >= 1
    assert result.throughput and result.throughput > 0


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_per_layer_tables(backend: str, artifacts: dict[str, Path | str]) -> None:
    path = artifacts["onnx"] if backend == "onnxruntime" else _xml(artifacts)
    prof = profile_layers(path, (1, 3, 64, 64), runs=2, threads=2)
    assert prof.backend == backend and prof.runs == 2 and prof.total_ms > 0
    assert [t.ms for t in prof.layers] == sorted((t.ms for t in prof.layers), reverse=True)
    assert sum(t.share for t in prof.by_type) == pytest.approx(1.0)
    assert sum(t.layers for t in prof.by_type) >= len(prof.layers) > 10
    types = {t.op_type for t in prof.by_type}
    assert types & {"Conv", "Convolution", "MatMul", "FullyConnected"}, types
    if backend == "openvino":
        assert all(t.detail for t in prof.layers), "the kernel (and its precision) of every layer"


def test_result_files_schema_and_compare(onnx_bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    report = BenchReport("bench", sysinfo.collect_device_info(2, idle_sample_s=0), {"batches": [1, 2]}, [onnx_bench])
    write_json(report, tmp_path / "a.json")
    write_csv(report, tmp_path / "a.csv")
    data = load_report(tmp_path / "a.json")
    assert data["schema"] == SCHEMA and data["schema_version"] == 1 and data["kind"] == "bench"
    assert {"cpu_model", "cpu_cores", "threads", "memory_bytes", "gpus", "board_model", "power_mode",
            "libraries"} <= set(data["device"])
    result = data["artifacts"][0]["results"][0]
    assert set(result["latency"]) >= {"runs", "cold_ms", "mean", "std", "min", "p50", "p90", "p95", "p99", "max"}
    with open(tmp_path / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 4
    assert rows[0]["sha256"] == onnx_bench.sha256 and rows[0]["cpu_model"] and rows[0]["threads"] == "2"
    assert float(rows[0]["p50_ms"]) == pytest.approx(onnx_bench.results[0].latency.p50, rel=1e-3)

    slower = json.loads((tmp_path / "a.json").read_text())
    for r in slower["artifacts"][0]["results"]:
        r["latency"]["p50"] *= 2
    comparison = compare(data, slower)
    assert len(comparison.rows) == 4 and all(r.same_file for r in comparison.rows)
    assert all(r.p50_ratio == pytest.approx(2.0) for r in comparison.rows)

    (tmp_path / "other.json").write_text(json.dumps({"schema": SCHEMA, "schema_version": 99}))
    with pytest.raises(ReportError, match="schema version 99"):
        load_report(tmp_path / "other.json")
    (tmp_path / "foreign.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="not a glnet-export benchmark result"):
        load_report(tmp_path / "foreign.json")


def _fake_command(folder: Path, name: str, output: str) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_device_info_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = sysinfo.collect_device_info(threads=2, idle_sample_s=0.2)
    assert info.busy_cpus is None or 0 <= info.busy_cpus <= (os.cpu_count() or 1)
    assert info.cpu_model and info.cpu_logical >= 1 and info.threads == 2 and info.memory_bytes
    assert "numpy" in info.libraries and "onnxruntime" in info.libraries and info.collected_at
    assert sysinfo.device_from_dict(json.loads(json.dumps(dataclasses.asdict(info)))) == info

    cpuinfo = tmp_path / "cpuinfo"
    blocks = [f"processor\t: {i}\nmodel name\t: Test CPU 9000\nphysical id\t: 0\ncore id\t\t: {i // 2}\n"
              f"flags\t\t: fpu avx2 avx512f avx512_bf16" for i in range(4)]
    cpuinfo.write_text("\n\n".join(blocks) + "\n")
    assert sysinfo.cpu_info(cpuinfo) == ("Test CPU 9000", 2, ["avx2", "avx512f", "avx512_bf16"])
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert sysinfo.cpu_quota(tmp_path) == 2.0
    (tmp_path / "meminfo").write_text("MemTotal:        8000000 kB\n")
    assert sysinfo.memory_bytes(tmp_path / "meminfo") == 8000000 * 1024

    # A Jetson: device-tree model, nvpmodel, L4T release; a discrete GPU: nvidia-smi.
    (tmp_path / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "release").write_text("# R36 (release), REVISION: 4.3\n")
    _fake_command(tmp_path, "nvpmodel", "NV Power Mode: 15W\n0")
    _fake_command(tmp_path, "nvidia-smi", "NVIDIA H100 80GB HBM3, 550.54.15, 81559, 9.0")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert sysinfo.jetson_info(tmp_path / "model", tmp_path / "release") == (
        "NVIDIA Jetson Orin Nano Developer Kit", "15W (0)", "R36 (release), REVISION: 4.3")
    (gpu,) = sysinfo.gpu_info()
    assert (gpu.name, gpu.driver, gpu.memory_bytes, gpu.compute_capability) == (
        "NVIDIA H100 80GB HBM3", "550.54.15", 81559 * 2**20, "9.0")


def test_plot_file(onnx_bench, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = plot_latency([onnx_bench], tmp_path / "latency.png", "test machine")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(PlotError, match="nothing to plot"):
        plot_latency([], tmp_path / "empty.png")


def test_plots_without_matplotlib_say_which_extra_and_write_nothing(onnx_bench, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from verification.precision_debug import BlockError, PrecisionDebugReport
    from verification.precision_plot import plot_block_errors

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    block = BlockError("stages.0.blocks.0", "t", (1, 8, 4, 4), 1e-3, 1e-3, 0.99, 1.0, False)
    report = PrecisionDebugReport("a.onnx", "onnxruntime", "fp32", None, (1, 3, 64, 64), 1, 1, 10.0, 1e-6,
                                  [block], None, None, "rule")
    for draw in (lambda: plot_latency([onnx_bench], tmp_path / "latency.png"),
                 lambda: plot_block_errors(report, tmp_path / "blocks.png")):
        with pytest.raises(BackendUnavailableError, match=r"pip install 'glnet-export\[plot\]'"):
            draw()
    assert list(tmp_path.iterdir()) == []


def test_cli_bench_and_compare(artifacts: dict[str, Path | str], tmp_path: Path) -> None:
    files = [str(artifacts["onnx"])] + ([str(artifacts["xml"])] if "xml" in artifacts else [])
    out = {k: tmp_path / f"r.{k}" for k in ("json", "csv", "png")}
    result = CliRunner().invoke(app, ["bench", *files, "--batch", "1", "--input-size", "64,96", "--iters", "3",
                                      "--warmup", "1", "--threads", "2", "--per-layer", "--top", "5",
                                      "--json", str(out["json"]), "--csv", str(out["csv"]), "--plot", str(out["png"])])
    assert result.exit_code == 0, result.output
    assert "Hottest operator types" in result.output and "tiny.onnx" in result.output
    assert "What a device must hold" in result.output and "peak RSS" in result.output
    assert all(p.stat().st_size > 0 for p in out.values())
    report = load_report(out["json"])
    assert len(report["artifacts"]) == len(files)
    for art in report["artifacts"]:  # the IR too: compiled for 1x3x64x64 in its fresh process
        assert art["load_seconds"] > 0 and art["first_inference_ms"] > 0 and art["edge_shape"] == [1, 3, 64, 64]
        assert art["peak_rss_mb"] > art["baseline_rss_mb"] > 0 and art["file_mb"] > 0, art["not_measured"]
    with open(out["csv"], newline="") as f:
        assert all(float(row["peak_rss_mb"]) > 0 for row in csv.DictReader(f))

    # B: the same results with every p50 doubled, as a device twice as slow would give.
    slower = json.loads(out["json"].read_text())
    for artifact in slower["artifacts"]:
        for r in artifact["results"]:
            r["latency"]["p50"] *= 2
    (tmp_path / "slower.json").write_text(json.dumps(slower))
    result = CliRunner().invoke(app, ["bench", "compare", str(out["json"]), str(tmp_path / "slower.json"), "--json",
                                      "-"])
    assert result.exit_code == 0, result.output
    ratios = [row["p50_ratio"] for row in json.loads(result.stdout)["rows"]]
    assert len(ratios) == 2 * len(files) and ratios == pytest.approx([2.0] * len(ratios))
    result = CliRunner().invoke(app, ["bench", "compare", str(out["json"]), str(tmp_path / "missing.json")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_cli_bench_ctrl_c_prints_what_was_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtimes

    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model")
    monkeypatch.setattr(runtimes, "load", lambda *a, **k: FakeRunner([1.0] * 100, [0.0], interrupt_at=6))
    result = CliRunner().invoke(app, ["bench", str(fake), "--input-size", "64", "--batch", "1,2", "--iters", "10",
                                      "--warmup", "1", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 130 and "interrupted" in result.output and "fake.onnx" in result.output
    data = load_report(tmp_path / "r.json")
    assert data["interrupted"] and data["artifacts"][0]["results"][0]["latency"]["runs"] == 4


def test_bench_by_model_end_to_end(tmp_path: Path) -> None:
    formats = "pytorch,onnxruntime,onnxruntime-target,onnxruntime-int8,openvino-fp32,openvino-int8,tensorrt-fp32"
    result = CliRunner().invoke(app, ["bench", "--model", TINY, "--input-size", "64", "--iters", "1",
                                      "--threads", "2", "--formats", formats, "--json", str(tmp_path / "b.json")])
    data = load_report(tmp_path / "b.json")
    rows = {r["format"]: r for r in data["extra"]["formats"]}
    assert list(rows) == formats.split(",") and data["kind"] == "benchmark"
    assert rows["pytorch"]["status"] == "ok" and rows["pytorch"]["p50_ms"] > 0
    for fmt in ("onnxruntime", "onnxruntime-target"):
        onnx = rows[fmt]
        assert onnx["status"] == "ok" and onnx["top1"] == 1.0 and onnx["max_rel"] < 1e-4 and onnx["size_bytes"] > 0
        assert onnx["photo_samples"] > 0 and onnx["p50_ms"] > 0 and onnx["throughput"] > 0
    assert rows["onnxruntime-target"]["path"].endswith("_ort.onnx")
    for fmt in ("onnxruntime", "onnxruntime-target", "onnxruntime-int8", "openvino-fp32", "openvino-int8"):
        assert rows[fmt]["load_seconds"] > 0 and rows[fmt]["first_inference_ms"] > 0, rows[fmt]
        assert rows[fmt]["peak_rss_mb"] > rows[fmt]["baseline_rss_mb"] > 0, rows[fmt]
    assert rows["pytorch"]["load_seconds"] is None  # no file: it runs in the benchmark's own process
    int8 = rows["onnxruntime-int8"]
    assert int8["status"] == "ok" and int8["precision"] == "int8" and int8["path"].endswith("_ort_int8.onnx"), int8
    assert int8["top1"] is not None and int8["p50_ms"] > 0
    for fmt in ("openvino-fp32", "openvino-int8"):  # OpenVINO and NNCF come with the dev extras: they must run
        assert rows[fmt]["status"] == "ok", rows[fmt]
        assert rows[fmt]["precision"] == fmt.split("-")[1] and rows[fmt]["top1"] is not None, rows[fmt]
    trt = rows["tensorrt-fp32"]
    if trt["status"] != "ok":  # TensorRT cannot be installed on these machines: skipped, saying why
        assert trt["status"] == "skipped" and "TensorRT" in trt["reason"], trt
    assert result.exit_code == 0, result.output
    assert "format" in result.output and "onnxruntime" in result.output and "peak RSS" in result.output
    assert {a["name"] for a in data["artifacts"]} >= {"pytorch", "onnxruntime"}
