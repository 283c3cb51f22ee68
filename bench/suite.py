"""`glnet-export benchmark`: every format that works here, exported, verified against
PyTorch and timed, in one table (like `yolo benchmark`).

A format that cannot be made or run here gets a row with the reason instead of stopping
the others. Verification runs every artifact on the same photographs and random inputs
as PyTorch (whose outputs are computed once and reused). Timing runs all the formats in
alternation, one request each per round, so load from other processes on a shared
machine hits them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import runtimes
from glnet.model import GLNet
from glnet_export.errors import OptionError, one_line
from glnet_export.photos import sample_photo_paths
from glnet_export.verification import shapes_to_verify, tolerance_for, verify
from runtimes.base import BackendUnavailableError, Runner

from .runner import ArtifactBench, BenchResult, artifact_files, artifact_sha256, interleave
from .stats import LatencyStats
from .timing import make_inputs

# name -> (artifact kind, precision asked of the runtime, description)
FORMATS: dict[str, tuple[str, str | None, str]] = {
    "pytorch": ("pytorch", None, "PyTorch eager (the reference)"),
    "onnxruntime": ("onnx", None, "portable ONNX in onnxruntime"),
    "onnxruntime-target": ("ort", None, "onnxruntime-targeted ONNX (`--target onnxruntime`: contrib Attention, "
                           "fused LayerNorms, folded residual convolutions)"),
    "onnxruntime-int8": ("ort-int8", None, "int8 Q/DQ ONNX for onnxruntime (`ort --precision int8`: Conv and "
                         "MatMul in int8, GLMix's clustering in float), for CPUs without bf16"),
    "openvino-fp32": ("ov-f32", None, "OpenVINO IR fp32 built for f32 compute (`--compute f32`: residual "
                      "convolutions folded), run in f32 as the file asks"),
    "openvino-auto": ("ov-fp32", None, "OpenVINO IR fp32, the device's own precision (bf16 where the CPU has it)"),
    "openvino-fp16": ("ov-fp16", None, "OpenVINO IR with fp16 weights, the device's own precision"),
    "openvino-int8": ("ov-int8", None, "OpenVINO IR int8 (NNCF), the device's own precision for the rest"),
    "tensorrt-fp32": ("trt-fp32", None, "TensorRT engine fp32"),
    "tensorrt-fp16": ("trt-fp16", None, "TensorRT engine fp16 (GLMix norms and softmaxes in fp32)"),
    "tensorrt-int8": ("trt-int8", None, "TensorRT engine int8 (Q/DQ)"),
}
Progress = Callable[[str], None]


@dataclass
class SuiteOptions:
    input_size: tuple[int, int] = (224, 224)
    batch: int = 1
    threads: int | None = None
    formats: tuple[str, ...] = tuple(FORMATS)
    calib: Path | None = None  # int8 calibration images (default: the sample photographs)
    calib_count: int = 300
    workdir: Path | None = None  # keep the artifacts here (default: a temporary folder, removed)
    rounds: int = 10
    per_round: int = 3  # timed runs per format and round, after one untimed settling run
    warmup: int = 3
    gpu: str = "cuda"  # device of the TensorRT engines

    def validate(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise OptionError(f"unknown format(s) {', '.join(repr(f) for f in unknown) or '(none given)'}; "
                              f"known: {', '.join(FORMATS)}")
        for option, value in (("--iters", self.rounds), ("--batch", self.batch), ("--threads", self.threads)):
            if value is not None and value < 1:
                raise OptionError(f"{option} must be >= 1, not {value}")
        if self.workdir is not None and not self.workdir.is_dir():
            reason = "is not a folder" if self.workdir.exists() else "does not exist"
            raise OptionError(f"--workdir {self.workdir} {reason}")


@dataclass
class FormatRow:
    format: str
    description: str
    status: str = "ok"  # ok | FAILED (verification) | error | skipped
    reason: str = ""
    path: str = ""
    size_bytes: int = 0
    precision: str = ""  # what ran
    export_s: float = 0.0
    max_abs: float | None = None  # over every verified shape
    max_rel: float | None = None
    top1: float | None = None  # agreement with PyTorch, the lowest over the verified shapes
    photo_samples: int = 0
    p50_ms: float | None = None
    throughput: float | None = None  # images/s at the mean latency


@dataclass
class SuiteResult:
    model: str
    weights: str
    rows: list[FormatRow]
    artifacts: list[ArtifactBench] = field(default_factory=list)


@contextlib.contextmanager
def _calibration_folder(calib: Path | None) -> Iterator[Path]:
    """The user's folder, or one holding links to the sample photographs."""
    if calib is not None:
        yield calib
        return
    with tempfile.TemporaryDirectory(prefix="glnet-calib-") as tmp:
        for photo in sample_photo_paths():
            (Path(tmp) / photo.name).symlink_to(photo)
        yield Path(tmp)


def _make(kind: str, source: dict[str, Path], work: Path, name: str, model: GLNet, sha256: str | None,
          options: SuiteOptions, calib: Path) -> Path:
    """Export the artifact of `kind` (ONNX first; everything else is converted from it)."""
    if kind == "onnx":
        from export.onnx import OnnxExportOptions, export_onnx

        onnx_options = OnnxExportOptions(input_size=options.input_size, batch=options.batch, dynamic="batch")
        return export_onnx(model, work / f"{name}.onnx", onnx_options, checkpoint_sha256=sha256).path
    if "onnx" not in source:
        raise OptionError("needs the ONNX export, which failed")
    if kind == "ort":
        from export.onnxruntime import convert_onnxruntime

        return convert_onnxruntime(source["onnx"], work / f"{name}_ort.onnx").path
    if kind == "ort-int8":
        from export.onnxruntime_int8 import quantize_onnxruntime_int8

        return quantize_onnxruntime_int8(source["onnx"], work / f"{name}_ort_int8.onnx", calib,
                                         calib_count=options.calib_count).path
    if kind.startswith("ov-"):
        from export.openvino import OpenVinoOptions, convert_openvino

        # "ov-f32": fp32 weights, built for f32 compute; "ov-fp16" etc.: for the device's choice.
        precision, compute = ("fp32", "f32") if kind == "ov-f32" else (kind[3:], "auto")
        ov_options = OpenVinoOptions(precision=precision, calib_dir=calib, calib_count=options.calib_count,
                                     compute=compute)
        return convert_openvino(source["onnx"], work / f"{name}_{kind[3:]}.xml", ov_options).xml
    from export.tensorrt import TensorRTBuildOptions, build_engine
    from runtimes.tensorrt import require_tensorrt

    require_tensorrt()
    trt_options = TensorRTBuildOptions(precision=kind[4:], calibration=calib)
    return build_engine(source["onnx"], work / f"{name}_{kind[4:]}.engine", trt_options).path


def _load(fmt: str, path: Path | None, model: GLNet, options: SuiteOptions) -> Runner:
    from runtimes.torch import TorchRunner

    kind, precision, _ = FORMATS[fmt]
    if kind == "pytorch" or path is None:
        return TorchRunner(model, threads=options.threads)
    device = options.gpu if kind.startswith("trt") else "cpu"
    return runtimes.load(path, device=device, threads=options.threads, precision=precision)


def run_suite(model: GLNet, options: SuiteOptions, checkpoint_sha256: str | None = None,
              progress: Progress | None = None) -> SuiteResult:
    """Export, verify and time `model` in every format of `options.formats`."""
    options.validate()
    say = progress or (lambda _msg: None)
    name = model.cfg.name
    rows = {f: FormatRow(f, FORMATS[f][2]) for f in options.formats}
    runners: dict[str, Runner] = {}
    with contextlib.ExitStack() as stack:
        work = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glnet-bench-")))
        calib = stack.enter_context(_calibration_folder(options.calib))
        made: dict[str, Path] = {}
        kinds = ["onnx"] if any(FORMATS[f][0] != "pytorch" for f in options.formats) else []
        kinds += [k for k in dict.fromkeys(FORMATS[f][0] for f in options.formats) if k not in ("pytorch", "onnx")]
        failed: dict[str, str] = {}
        for kind in kinds:
            say(f"exporting {kind}")
            start = time.perf_counter()
            try:
                made[kind] = _make(kind, made, work, name, model, checkpoint_sha256, options, calib)
            except BackendUnavailableError as exc:
                failed[kind] = f"skipped: {one_line(exc)}"
            except Exception as exc:  # noqa: BLE001 - a format that fails here is a row, not the end
                failed[kind] = one_line(exc)
            for row in rows.values():
                if FORMATS[row.format][0] == kind and kind in made:
                    row.export_s = time.perf_counter() - start
        for fmt, row in rows.items():
            kind = FORMATS[fmt][0]
            if kind in failed:
                skipped = failed[kind].startswith("skipped: ")
                row.status, row.reason = ("skipped" if skipped else "error"), failed[kind].removeprefix("skipped: ")
                continue
            path = made.get(kind)
            if path is not None:
                row.path = str(path)
                row.size_bytes = sum(p.stat().st_size for p in artifact_files(path))
            try:
                runners[fmt] = stack.enter_context(_load(fmt, path, model, options))
                row.precision = runners[fmt].precision
            except Exception as exc:  # noqa: BLE001
                row.status, row.reason = "error", f"cannot run: {one_line(exc)}"
        _verify_all(model, runners, rows, options, say)
        artifacts = _time_all(runners, rows, options, say)
    return SuiteResult(name, "random" if checkpoint_sha256 is None else checkpoint_sha256, list(rows.values()),
                       artifacts)


def _verify_all(model: GLNet, runners: dict[str, Runner], rows: dict[str, FormatRow], options: SuiteOptions,
                say: Progress) -> None:
    from runtimes.torch import TorchRunner

    cache: dict[bytes, np.ndarray] = {}
    reference = TorchRunner(model, threads=options.threads)

    def ref(x: np.ndarray) -> np.ndarray:  # the same inputs for every format: compute PyTorch once
        key = hashlib.sha1(x.tobytes()).digest() + str(x.shape).encode()
        if key not in cache:
            cache[key] = reference.infer(x)
        return cache[key]

    photos = sample_photo_paths()
    for fmt, runner in list(runners.items()):
        if fmt == "pytorch" or runner.metadata is None:
            continue
        say(f"verifying {fmt}")
        shapes = shapes_to_verify(runner.metadata, options.batch)
        report = verify(ref, runner.infer, runner.metadata, shapes, tolerance_for(runner.precision), photos,
                        names=("pytorch", fmt))
        row = rows[fmt]
        crashes = [f for r in report.results for f in r.failures if f.startswith("failed to run")]
        if crashes:
            row.status, row.reason = "error", crashes[0]
            del runners[fmt]  # it would fail again in the timing, which runs everything together
            continue
        row.max_abs = max(r.max_abs for r in report.results)
        row.max_rel = max(r.max_rel for r in report.results)
        row.top1 = min(r.top1 for r in report.results)
        row.photo_samples = report.results[0].photos
        if not report.passed:
            row.status = "FAILED"
            row.reason = "; ".join(f for r in report.results for f in r.failures)[:300]


def _time_all(runners: dict[str, Runner], rows: dict[str, FormatRow], options: SuiteOptions,
              say: Progress) -> list[ArtifactBench]:
    if not runners:
        return []
    h, w = options.input_size
    say(f"timing {len(runners)} format(s) in alternation, {options.rounds} rounds of {options.per_round}")
    inputs = make_inputs((options.batch, 3, h, w))
    stats: dict[str, LatencyStats] = interleave({f: r.infer for f, r in runners.items()}, inputs, options.rounds,
                                                options.per_round, warmup=options.warmup)
    artifacts = []
    for fmt, s in stats.items():
        row, runner = rows[fmt], runners[fmt]
        row.p50_ms, row.throughput = s.p50, options.batch * 1000.0 / s.mean
        path = Path(row.path) if row.path else None
        result = BenchResult(options.batch, h, w, "latency", latency=s, throughput=row.throughput,
                             wall_s=s.mean * s.runs / 1e3)
        artifacts.append(ArtifactBench(fmt, row.path, artifact_sha256(path) if path else "", row.size_bytes,
                                       runner.backend, runner.precision,
                                       runner.metadata.model if runner.metadata else "",
                                       list(runner.inputs[0].shape) if runner.inputs else [], [result]))
    return artifacts
