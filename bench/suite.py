"""`glnet-export bench --model M`: every format that works here, exported, verified against
PyTorch and timed, in one table (like `yolo benchmark`).

A format that cannot be made or run here gets a row with the reason instead of stopping
the others. Verification runs every artifact on the same photographs and random inputs
as PyTorch (whose outputs are computed once and reused). Timing runs all the formats in
alternation, one request each per round, so load from other processes on a shared
machine hits them alike and their ratios stay meaningful. Before that, each file is loaded
and run once more in a fresh process of its own (`bench.edge`): its load time, first
inference and peak resident memory. Energy is not measured here: formats timed in
alternation share one window (`bench ARTIFACT` measures it per file).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import runtimes
from artifacts.backends import BackendUnavailableError
from artifacts.errors import OptionError, one_line
from artifacts.jsonable import jsonable
from artifacts.labelled import LabelledSet
from artifacts.photos import sample_photo_paths
from export.formats import FORMATS, Format, build, default_output
from glnet.model import GLNet
from runtimes.base import Runner
from verification.accuracy import FormatAccuracy
from verification.metrics import shapes_to_verify, tolerance_for, verify

from .edge import EdgeFigures, measure_in_child
from .report import EDGE_COLUMNS
from .runner import ArtifactBench, BenchResult, artifact_files, artifact_sha256, interleave
from .stats import LatencyStats
from .timing import make_inputs

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
    edge: bool = True  # each file's load time, first inference and peak memory, from a fresh process
    data: Path | None = None  # labelled images: top-1 of every format and its change from PyTorch
    labels: Path | None = None  # their labels file, where not class folders (artifacts.labelled)
    limit: int | None = None  # a class-balanced sample of the labelled images

    def validate(self) -> None:
        from export.formats import parse_formats

        parse_formats(",".join(self.formats))  # every name known, at least one
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
    # From a fresh process (`bench.edge`); the format's ArtifactBench takes the same figures.
    edge: EdgeFigures | None = None
    accuracy: FormatAccuracy | None = None  # on --data: top-1 / top-5 and the change from PyTorch

    def figure(self, name: str) -> float | None:
        """One of the edge figures (`report.EDGE_COLUMNS`); None where not measured."""
        return getattr(self.edge, name, None)

    def to_json(self) -> dict[str, Any]:
        """The row as reports hold it: `edge` written as the flat `EDGE_COLUMNS` in its place."""
        out: dict[str, Any] = {}
        for key, value in jsonable(self).items():
            if key == "edge":
                out.update({name: jsonable(self.figure(name)) for name in EDGE_COLUMNS})
            else:
                out[key] = value
        return out


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


def _make(fmt: Format, onnx: Path | None, work: Path, model: GLNet, sha256: str | None, options: SuiteOptions,
          calib: Path) -> Path:
    """Build `fmt` through the format table: the portable ONNX from the model, the rest from it."""
    why = fmt.missing()
    if why is not None:
        raise BackendUnavailableError(why)
    settings: dict[str, Any] = {}
    if fmt.built_from == "model":
        settings = {"input_size": options.input_size, "batch": options.batch, "dynamic": "batch"}
        return build(fmt, model, work / f"{model.cfg.name}.onnx", checkpoint_sha256=sha256, **settings).path
    if onnx is None:
        raise OptionError("needs the ONNX export, which failed")
    if fmt.converter in ("openvino", "onnxruntime-int8"):
        settings["calib_count"] = options.calib_count
    return build(fmt, onnx, default_output(fmt, onnx), calib=calib if fmt.calibrated else None, **settings).path


def _load(fmt: Format, path: Path | None, model: GLNet, options: SuiteOptions) -> Runner:
    from runtimes.torch import TorchRunner

    if fmt.runtime == "torch" or path is None:
        return TorchRunner(model, threads=options.threads)
    device = options.gpu if fmt.gpu else "cpu"
    return runtimes.load(path, device=device, threads=options.threads, precision=fmt.run_precision)


def run_suite(model: GLNet, options: SuiteOptions, checkpoint_sha256: str | None = None,
              progress: Progress | None = None) -> SuiteResult:
    """Export, verify and time `model` in every format of `options.formats`."""
    options.validate()
    say = progress or (lambda _msg: None)
    name = model.cfg.name
    labelled = _labelled(model, options)  # bad --data fails here, before any export
    rows = {f: FormatRow(f, FORMATS[f].description) for f in options.formats}
    runners: dict[str, Runner] = {}
    with contextlib.ExitStack() as stack:
        work = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glnet-bench-")))
        calib = stack.enter_context(_calibration_folder(options.calib))
        # The portable ONNX first (everything else is converted from it), whenever any file is wanted.
        wanted = [FORMATS[f] for f in options.formats if FORMATS[f].converter]
        if wanted and not any(f.built_from == "model" for f in wanted):
            wanted.insert(0, FORMATS["onnxruntime"])
        made: dict[str, Path] = {}
        failed: dict[str, str] = {}
        onnx: Path | None = None
        for fmt in sorted(wanted, key=lambda f: f.built_from != "model"):
            say(f"exporting {fmt.name}")
            start = time.perf_counter()
            try:
                made[fmt.name] = _make(fmt, onnx, work, model, checkpoint_sha256, options, calib)
            except BackendUnavailableError as exc:
                failed[fmt.name] = f"skipped: {one_line(exc)}"
            except Exception as exc:  # noqa: BLE001 - a format that fails here is a row, not the end
                failed[fmt.name] = one_line(exc)
            if fmt.built_from == "model":
                onnx = made.get(fmt.name)
            if fmt.name in rows and fmt.name in made:
                rows[fmt.name].export_s = time.perf_counter() - start
        # Before anything is loaded here, so that nothing competes with the fresh processes.
        if options.edge:
            _measure_edge({f: made[f] for f in rows if f in made}, rows, options, say)
        for name_, row in rows.items():
            fmt = FORMATS[name_]
            if fmt.name in failed:
                skipped = failed[fmt.name].startswith("skipped: ")
                row.status, row.reason = (("skipped" if skipped else "error"),
                                          failed[fmt.name].removeprefix("skipped: "))
                continue
            path = made.get(fmt.name)
            if path is not None:
                row.path = str(path)
                row.size_bytes = sum(p.stat().st_size for p in artifact_files(path))
            try:
                runners[name_] = stack.enter_context(_load(fmt, path, model, options))
                row.precision = runners[name_].precision
            except Exception as exc:  # noqa: BLE001
                row.status, row.reason = "error", f"cannot run: {one_line(exc)}"
        _verify_all(model, runners, rows, options, say)
        if labelled is not None:
            _score_all(model, runners, rows, labelled, options, say)
        artifacts = _time_all(runners, rows, options, say)
    return SuiteResult(name, "random" if checkpoint_sha256 is None else checkpoint_sha256, list(rows.values()),
                       artifacts)


def _labelled(model: GLNet, options: SuiteOptions) -> LabelledSet | None:
    from artifacts.labelled import read_labelled
    from artifacts.labels import labels_for
    from artifacts.metadata import IMAGENET_LABELS

    if options.data is None:
        return None
    # ImageNet's names when the model has 1000 classes, as its exports say (else "class N").
    return read_labelled(options.data, options.labels, labels_for(IMAGENET_LABELS, model.num_classes), options.limit)


def _score_all(model: GLNet, runners: dict[str, Runner], rows: dict[str, FormatRow], labelled: LabelledSet,
               options: SuiteOptions, say: Progress) -> None:
    """Every format on the labelled images, each paired with PyTorch on the same images."""
    from runtimes.torch import TorchRunner
    from verification.accuracy import PYTORCH, AccuracyOptions, score_runners

    reference = runners.get("pytorch") or TorchRunner(model, threads=options.threads)
    files = [(f, r) for f, r in runners.items() if f != "pytorch"]
    # Preprocessing as the files say; PyTorch alone: at the --input-size (its runner knows no export size).
    meta = next((r.metadata for _f, r in files if r.metadata is not None), None)
    if meta is None:
        assert reference.metadata is not None
        meta = replace(reference.metadata, input_size=options.input_size)
    # At least 8 a call, and no more: TensorRT engines take up to 8 unless built for a larger --batch.
    accuracy = AccuracyOptions(batch=max(options.batch, 8), threads=options.threads)
    try:
        scored = score_runners([(PYTORCH, reference), *files], labelled, meta, PYTORCH, accuracy,
                               lambda _what, done, total: say(f"accuracy on the labelled images: {done}/{total}"))
    except Exception as exc:  # noqa: BLE001 - the timing still has something to say
        for row in rows.values():
            row.reason = "; ".join(filter(None, (row.reason, f"accuracy not measured: {one_line(exc)}")))
        return
    for result in scored:
        if result.name in rows:
            rows[result.name].accuracy = result


def _measure_edge(files: dict[str, Path], rows: dict[str, FormatRow], options: SuiteOptions,
                  say: Progress) -> None:
    h, w = options.input_size
    for name, path in files.items():
        fmt = FORMATS[name]
        say(f"loading {name} in a fresh process: load time, first inference, memory")
        rows[name].edge = measure_in_child(path, (options.batch, 3, h, w), options.gpu if fmt.gpu else "cpu",
                                           options.threads, fmt.run_precision)


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
        bench = ArtifactBench(fmt, row.path, artifact_sha256(path) if path else "", row.size_bytes,
                              runner.backend, runner.precision, runner.metadata.model if runner.metadata else "",
                              list(runner.inputs[0].shape) if runner.inputs else [], [result])
        if row.edge is not None:
            bench.set_edge(row.edge)
        else:
            reason = "not asked" if path and not options.edge else "no file: PyTorch runs in this process"
            bench.not_measured.update(dict.fromkeys(("load_seconds", "first_inference_ms", "peak_rss_mb"), reason))
        bench.not_measured["energy_mj_per_image"] = ("formats timed in alternation share one window; "
                                                     "`bench ARTIFACT` measures energy per file")
        artifacts.append(bench)
    return artifacts
