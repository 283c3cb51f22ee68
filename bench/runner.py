"""Benchmark one artifact (or any `Runner`) over batches x input sizes, in latency or
throughput mode, into typed results.

Latency mode: one request at a time, each timed on the host (TensorRT also reports the
GPU compute time apart from the copies). Throughput mode: several requests in flight, the
way each back-end does it (OpenVINO async infer requests, onnxruntime parallel sessions
in threads, TensorRT engines on their own streams); images per second over the wall time.
Inputs rotate among several buffers and the first (cold) run is reported apart. Ctrl-C
stops the measuring and returns what was measured, marked `interrupted`.

Per artifact also what edge devices are sized by: the file's size, and from a fresh
process (`bench.edge`) the load time, the first inference and the peak resident memory;
energy per image where the machine has a meter (`bench.energy`), over the timed runs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import runtimes
from artifacts.errors import OptionError, one_line
from runtimes.base import Runner

from .edge import MIB, EdgeFigures, measure_in_child
from .energy import EnergyMeter, EnergyReading, find_meter
from .pools import Pool, make_pool
from .profile import LayerProfile, profile_layers
from .stats import LatencyStats
from .timing import make_inputs

MODES = ("latency", "throughput")
Tick = Callable[[str, float], None]  # (what is being measured, fraction done)


@dataclass(frozen=True)
class Budget:
    """How long a phase runs: `count` iterations, or `seconds` of wall time (at least `minimum` runs)."""

    count: int | None = None
    seconds: float | None = None
    minimum: int = 3

    @classmethod
    def parse(cls, text: str | int | float, minimum: int = 3) -> Budget:
        """'20' -> 20 iterations; '5s', '2.5s', '500ms' -> time."""
        value = str(text).strip().lower()
        try:
            if value.endswith("ms"):
                budget = cls(seconds=float(value[:-2]) / 1e3, minimum=minimum)
            elif value.endswith("s"):
                budget = cls(seconds=float(value[:-1]), minimum=minimum)
            else:
                budget = cls(count=int(value), minimum=minimum)
        except ValueError:
            raise OptionError(f"{text!r} is neither a number of iterations (20) nor a duration (5s, 500ms)") from None
        if (budget.count or 0) < 0 or (budget.seconds or 0.0) < 0:
            raise OptionError(f"{text!r}: a number of iterations or a duration cannot be negative")
        return budget

    def progress(self, runs: int, elapsed: float) -> float:
        """Fraction done; 1.0 or more when the phase is over."""
        if self.count is not None:
            return runs / self.count if self.count > 0 else 1.0
        if not self.seconds or self.seconds <= 0:
            return 1.0
        by_time = elapsed / self.seconds
        return min(by_time, runs / self.minimum) if runs < self.minimum else by_time

    def reached(self, runs: int, elapsed: float) -> bool:
        return self.progress(runs, elapsed) >= 1.0


@dataclass
class BenchOptions:
    batches: tuple[int, ...] = (1,)
    sizes: tuple[tuple[int, int], ...] = ()  # () = the size the artifact was exported for
    warmup: Budget = field(default_factory=lambda: Budget(count=3))
    measure: Budget = field(default_factory=lambda: Budget(seconds=5.0, minimum=5))
    threads: int | None = None
    device: str = "cpu"
    precision: str | None = None  # asked of OpenVINO (None: the device's own choice)
    mode: str = "latency"
    streams: int | None = None  # throughput mode: requests in flight (None: the back-end's choice)
    buffers: int = 4  # rotating input buffers, so caches do not flatter the numbers
    per_layer: bool = False
    layer_runs: int = 10
    edge: bool = True  # load time, first inference, peak memory: measured in a fresh process per artifact

    def validate(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not self.batches or min(self.batches) < 1:
            raise OptionError(f"batch sizes must be >= 1, not {list(self.batches)}")
        if any(min(s) < 32 for s in self.sizes):
            raise OptionError("input sizes must be at least 32 (GLNet down-samples 32x)")
        if self.streams is not None and self.streams < 1:
            raise OptionError(f"--streams must be >= 1, not {self.streams}")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads must be >= 1, not {self.threads}")
        if self.measure.count is not None and self.measure.count < 1:
            raise OptionError(f"--iters must be >= 1, not {self.measure.count}")
        if self.measure.count is None and not (self.measure.seconds or 0) > 0:
            raise OptionError(f"--duration must be above 0 s, not {self.measure.seconds} s")
        if (self.warmup.count or 0) < 0 or (self.warmup.seconds or 0) < 0:
            raise OptionError("--warmup cannot be negative")


@dataclass
class BenchResult:
    """One (batch, size) of one artifact. Latencies in ms; `throughput` in images/s over the wall time."""

    batch: int
    height: int
    width: int
    mode: str
    streams: int = 1
    latency: LatencyStats | None = None  # warm runs; the cold run is latency.cold_ms
    throughput: float | None = None
    gpu_compute: LatencyStats | None = None  # TensorRT: execute only, without the host-device copies
    wall_s: float = 0.0
    energy_mj_per_image: float | None = None  # over the timed runs (see `energy_source`)
    avg_power_w: float | None = None
    energy_source: str = ""  # "RAPL package-0" (the CPU package), "tegrastats VDD_IN" (the board)
    energy_note: str = ""  # why there is no energy figure
    error: str = ""
    interrupted: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.height, self.width)


@dataclass
class ArtifactBench:
    name: str
    path: str
    sha256: str  # of the file (an OpenVINO IR: of the .xml, then its .bin)
    size_bytes: int
    backend: str
    precision: str  # what ran, as the runner reports it
    model: str
    input: list[int | str | None]  # the artifact's input shape, names for dynamic axes
    results: list[BenchResult] = field(default_factory=list)
    layers: LayerProfile | None = None
    layers_error: str = ""
    interrupted: bool = False
    # What edge devices are sized by. Memory in MiB. The file's size from `size_bytes` (None
    # without a file). Load, first inference and memory come from a fresh process at
    # `edge_shape` (`bench.edge`); energy from the timed runs of that shape. None where not
    # measured, the reason in `not_measured` under the field's name.
    file_mb: float | None = field(init=False, default=None)
    load_seconds: float | None = None
    first_inference_ms: float | None = None
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None  # the bare interpreter + runtime import: the model costs the rest
    gpu_memory_mb: float | None = None
    energy_mj_per_image: float | None = None
    avg_power_w: float | None = None
    edge_shape: list[int] = field(default_factory=list)
    not_measured: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.file_mb = self.size_bytes / MIB if self.path else None

    def first_measured(self) -> BenchResult | None:
        """The first (batch, size) that ran: the one the artifact-level figures are of."""
        return next((r for r in self.results if r.latency is not None), None)

    def set_edge(self, figures: EdgeFigures) -> None:
        """Take the fresh process's figures (`bench.edge`)."""
        self.edge_shape = list(figures.shape)
        self.load_seconds, self.first_inference_ms = figures.load_seconds, figures.first_inference_ms
        self.peak_rss_mb, self.baseline_rss_mb = figures.peak_rss_mb, figures.baseline_rss_mb
        self.gpu_memory_mb = figures.gpu_memory_mb
        self.not_measured.update(figures.not_measured)


def artifact_files(path: Path) -> list[Path]:
    """The files an artifact consists of (an IR's weights live in the .bin beside the .xml)."""
    side = path.with_suffix(".bin")
    return [path, side] if path.suffix.lower() == ".xml" and side.is_file() else [path]


def artifact_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for part in artifact_files(path):
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def default_size(runner: Runner) -> tuple[int, int]:
    dims = runner.inputs[0].shape if runner.inputs else ()
    if len(dims) == 4 and isinstance(dims[2], int) and isinstance(dims[3], int):
        return dims[2], dims[3]
    return runner.metadata.input_size if runner.metadata else (224, 224)


def _shape_problem(runner: Runner, shape: tuple[int, ...]) -> str:
    """Why the artifact cannot take `shape` (a fixed axis), or ""."""
    spec = runner.inputs[0] if runner.inputs else None
    for axis, (want, got) in enumerate(zip(spec.shape if spec else (), shape, strict=False)):
        if isinstance(want, int) and want != got:
            return f"the artifact's input is fixed at {want} on axis {axis} ({'batch' if axis == 0 else 'size'})"
    return ""


def _time_pool(pool: Pool, inputs: Sequence[np.ndarray], options: BenchOptions, tick: Callable[[float], None],
               meter: EnergyMeter) -> tuple[float, list[float], float, bool, EnergyReading | None]:
    """(cold ms, per-request ms, wall s of the measured part, interrupted, energy of the measured part)."""
    cold, begin, measuring = float("nan"), time.perf_counter(), False
    try:
        start = time.perf_counter()
        pool.submit(inputs[0])
        pool.drain()
        cold = (time.perf_counter() - start) * 1e3
        warm_start, i = time.perf_counter(), 0
        while not options.warmup.reached(i, time.perf_counter() - warm_start):
            i += 1
            pool.submit(inputs[i % len(inputs)])
        pool.drain()
        pool.latencies.clear()
        pool.gpu_ms.clear()
        meter.start()
        begin, submitted, measuring = time.perf_counter(), 0, True
        while not options.measure.reached(submitted, time.perf_counter() - begin):
            pool.submit(inputs[(i + submitted) % len(inputs)])  # rotate on from where warm-up stopped
            submitted += 1
            tick(options.measure.progress(submitted, time.perf_counter() - begin))
        pool.drain()
        wall = time.perf_counter() - begin
        return cold, list(pool.latencies), wall, False, meter.stop()
    except KeyboardInterrupt:
        return cold, list(pool.latencies) if measuring else [], time.perf_counter() - begin, True, None
    finally:
        meter.close()  # a background sampler never outlives the cell (Ctrl-C included)


def bench_cell(runner: Runner, path: Path | None, batch: int, size: tuple[int, int], options: BenchOptions,
               tick: Callable[[float], None] = lambda _f: None, meter: EnergyMeter | None = None) -> BenchResult:
    """One (batch, size): errors (a fixed axis, outside a TensorRT profile) are recorded, not raised."""
    result = BenchResult(batch, size[0], size[1], options.mode)
    shape = (batch, 3, size[0], size[1])
    result.error = _shape_problem(runner, shape)
    if result.error:
        return result
    inputs = make_inputs(shape, options.buffers, seed=batch * 7919 + size[0] * 31 + size[1])
    try:
        runner.prepare(shape)  # a per-shape compile is set-up, not the cold run
        with make_pool(runner, path, shape, options.mode, options.streams, options.threads, options.device,
                       options.precision) as pool:
            result.streams = pool.parallel
            cold, warm, wall, result.interrupted, energy = _time_pool(pool, inputs, options, tick,
                                                                      meter or find_meter())
            gpu = list(pool.gpu_ms)
    except KeyboardInterrupt:  # while setting up or closing the pool
        result.interrupted, result.error = True, "interrupted"
        return result
    except Exception as exc:  # noqa: BLE001 - one failing cell must not lose the others
        result.error = one_line(exc)
        return result
    if not warm:
        result.error = "interrupted before any warm run" if result.interrupted else "no warm runs"
        return result
    result.latency = LatencyStats.from_timings(warm, cold, batch)
    # In latency mode the wall time is the sum of the requests; in throughput mode it is
    # less, by as much as the requests overlapped.
    result.throughput = batch * len(warm) / wall if wall > 0 else None
    result.wall_s = wall
    if gpu:
        result.gpu_compute = LatencyStats.from_timings(gpu[-len(warm):], float("nan"), batch)
    if energy is not None:
        result.energy_mj_per_image, result.avg_power_w = energy.per_image(batch * len(warm)), energy.avg_power_w
        result.energy_source, result.energy_note = energy.source, energy.note
    return result


def bench_runner(runner: Runner, options: BenchOptions, name: str, path: Path | None = None,
                 tick: Tick | None = None, meter: EnergyMeter | None = None) -> ArtifactBench:
    """Benchmark a loaded runner at every (batch, size); `path` enables throughput mode and per-layer.
    `meter` reads energy over each cell's timed runs (default: what this machine has, `find_meter`)."""
    options.validate()
    bench = ArtifactBench(
        name=name, path=str(path or ""), sha256=artifact_sha256(path) if path else "",
        size_bytes=sum(p.stat().st_size for p in artifact_files(path)) if path else 0,
        backend=runner.backend, precision=runner.precision, model=runner.metadata.model if runner.metadata else "",
        input=list(runner.inputs[0].shape) if runner.inputs else [],
    )
    meter = meter or find_meter()
    sizes = options.sizes or (default_size(runner),)
    for batch in options.batches:
        for size in sizes:
            label = f"{name} {batch}x3x{size[0]}x{size[1]}"

            def cell_tick(fraction: float, label: str = label) -> None:
                if tick is not None:
                    tick(label, fraction)

            result = bench_cell(runner, path, batch, size, options, cell_tick, meter)
            bench.results.append(result)
            if result.interrupted:
                bench.interrupted = True
                return bench
    first = bench.first_measured()
    if first is not None:
        bench.energy_mj_per_image, bench.avg_power_w = first.energy_mj_per_image, first.avg_power_w
        if first.energy_note:
            bench.not_measured["energy_mj_per_image"] = first.energy_note
    if options.per_layer:
        ran = [r for r in bench.results if r.latency is not None]
        if path is None:
            bench.layers_error = f"per-layer profiling needs an artifact file ({runner.backend} has none)"
        elif ran:
            try:
                bench.layers = profile_layers(path, ran[0].shape, options.layer_runs, options.threads,
                                              options.device, options.precision)
            except KeyboardInterrupt:
                bench.interrupted = True
            except Exception as exc:  # noqa: BLE001 - a profiler failure must not lose the timings
                bench.layers_error = one_line(exc)
    return bench


def bench_artifact(path: str | Path, options: BenchOptions, tick: Tick | None = None,
                   meter: EnergyMeter | None = None) -> ArtifactBench:
    """Load `path` with `runtimes.load` and benchmark it (see `bench_runner`); then, with
    `options.edge`, measure its load, first inference and memory in a fresh process at the
    first (batch, size) that ran (after the runner here is closed, so they do not compete)."""
    path = Path(path)
    options.validate()
    with runtimes.load(path, device=options.device, threads=options.threads, precision=options.precision) as runner:
        bench = bench_runner(runner, options, path.name, path, tick, meter)
    ran = bench.first_measured()
    if options.edge and ran is not None and not bench.interrupted:
        if tick is not None:
            tick(f"{path.name}: load, first inference, memory (fresh process)", 0.0)
        try:
            bench.set_edge(measure_in_child(path, ran.shape, options.device, options.threads, options.precision))
        except KeyboardInterrupt:
            bench.interrupted = True
    elif not options.edge:
        bench.not_measured.update(dict.fromkeys(("load_seconds", "first_inference_ms", "peak_rss_mb"), "not asked"))
    return bench


def interleave(fns: Mapping[str, Callable[[np.ndarray], object]],
               inputs: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]], rounds: int, per_round: int = 3,
               settle: int = 1, warmup: int = 2, tick: Callable[[float], None] = lambda _f: None,
               blocks: dict[str, list[float]] | None = None) -> dict[str, LatencyStats]:
    """Several candidates timed in alternating blocks (A A A B B B A A A ...), for ratios on shared machines.

    Each block starts with `settle` untimed runs: the first run after a switch pays for the
    other runtime's threads still spinning and its data in the caches (measured here: up to
    4x the steady latency of a small GLNet in PyTorch right after onnxruntime), which would
    otherwise be charged to whichever candidate runs after the slowest-to-settle one.
    `inputs` is one list of rotating buffers for all, or one per candidate (other sizes).
    `blocks`, when given, receives each candidate's median per round: ratios of neighbouring
    blocks cancel slow changes in the machine's load (see `paired_ratio`).
    """
    feeds = inputs if isinstance(inputs, Mapping) else {name: inputs for name in fns}
    colds: dict[str, float] = {}
    warm: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        xs = feeds[name]
        start = time.perf_counter()
        fn(xs[0])
        colds[name] = (time.perf_counter() - start) * 1e3
        for i in range(warmup):
            fn(xs[(i + 1) % len(xs)])
    for r in range(rounds):
        for name, fn in fns.items():
            xs = feeds[name]
            for i in range(settle + per_round):
                x = xs[(r * per_round + i) % len(xs)]
                start = time.perf_counter()
                fn(x)
                if i >= settle:
                    warm[name].append((time.perf_counter() - start) * 1e3)
            if blocks is not None:
                blocks.setdefault(name, []).append(float(np.median(warm[name][-per_round:])))
        tick((r + 1) / rounds)
    return {name: LatencyStats.from_timings(warm[name], colds[name], int(feeds[name][0].shape[0])) for name in fns}


def paired_ratio(blocks: Mapping[str, Sequence[float]], candidate: str, baseline: str) -> float:
    """The median over rounds of candidate / baseline block medians (both from `interleave`)."""
    return float(np.median(np.asarray(blocks[candidate]) / np.asarray(blocks[baseline])))
