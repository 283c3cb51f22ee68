"""Does the whole TensorRT path work on this machine? One run, one JSON file.

    python -m experiments.device_check [--models glnet_tiny,glnet_4g] [--budget-s 450] [--json F]

On a machine with TensorRT and an NVIDIA GPU (a Jetson, a GPU server), for each model (seeded
weights, `glnet.testing.seeded_model`): export the portable ONNX, build fp32 (TF32 off), fp16
and int8 engines (int8 calibrated on the sample photographs), all through the format table
(`export.formats.build`); verify each engine against the fp32 ONNX at the shapes its profile
takes, as `glnet-export tensorrt` does; time each (`bench.runner`, batch 1 and 8) and compare
the runner with and without CUDA graphs; record the device (`bench.sysinfo`, Jetson power mode
and clock state included).

Every step is recorded with its status (ok, failed, skipped), seconds and error; the JSON is
rewritten after each step, so an interrupted run still leaves what it did. A step does not
start when the time budget (--budget-s) has less left than the step needs (a rough figure per
step and model, NEEDS_S), and a watchdog ends the run --grace-s after the budget whatever is
running, so the default run ends within 8 minutes. Where TensorRT or a GPU is missing it stops
at once: one line, exit code 2, a JSON of status "skipped" with the reason.
Exit codes: 0 every step that ran passed, 1 a step failed, 2 skipped, 3 stopped by the watchdog.
Results: docs/benchmarks/<date>-device-check.json unless --json says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from artifacts.backends import BackendUnavailableError, cuda_device, require_tensorrt
from artifacts.errors import one_line
from artifacts.jsonable import jsonable
from experiments.results import default_help, results_path

SCHEMA = "glnet-export/device-check"
MODELS = ("glnet_tiny", "glnet_4g")
PRECISIONS = ("fp32", "fp16", "int8")
# Seconds a step is expected to need at least; a step starts only with that much budget left.
# Guesses (no TensorRT has run here): a Jetson is slower than a GPU server.
NEEDS_S = {"export": {"glnet_tiny": 10, "glnet_4g": 40}, "build": {"glnet_tiny": 15, "glnet_4g": 60},
           "verify": {"glnet_tiny": 5, "glnet_4g": 15}, "bench": {"glnet_tiny": 10, "glnet_4g": 20}}


def needs(kind: str, model: str) -> float:
    """NEEDS_S of a step; another variant is taken to need what glnet_4g needs."""
    return NEEDS_S[kind].get(model, NEEDS_S[kind]["glnet_4g"])


@dataclass
class Step:
    name: str
    status: str = "skipped"  # ok | failed | skipped (running while it runs)
    seconds: float = 0.0
    error: str = ""  # the failure, or why it was skipped
    result: Any = None


class StepFailed(Exception):
    """A step that ran to its end with a bad outcome (a mismatch, a shape that could not run): its
    result is kept beside the error."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Run:
    """The steps of one device check within a time budget, and the JSON that records them."""

    budget_s: float
    out: Path
    clock: Callable[[], float] = time.monotonic
    steps: list[Step] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # device, versions, what the options could do
    status: str = "running"
    reason: str = ""

    def __post_init__(self) -> None:
        self.start = self.clock()
        self.lock = threading.Lock()

    def remaining(self) -> float:
        return self.budget_s - (self.clock() - self.start)

    def step(self, name: str, fn: Callable[[], Any], needs_s: float = 0.0, after: Step | None = None) -> Step:
        """Run `fn` as step `name` unless what it needs failed or the budget cannot cover it."""
        step = Step(name)
        self.steps.append(step)
        if after is not None and after.status != "ok":
            step.error = f"needs {after.name}, which was {after.status}"
        elif self.remaining() < needs_s:
            step.error = (f"time budget: {max(self.remaining(), 0):.0f} s of {self.budget_s:.0f} s left, "
                          f"this step needs about {needs_s:.0f} s")
        else:
            started, step.status = self.clock(), "running"
            try:
                step.result, step.status = fn(), "ok"
            except StepFailed as exc:
                step.status, step.error, step.result = "failed", one_line(exc), exc.result
            except Exception as exc:  # noqa: BLE001 - one failing step must not lose the others
                step.status, step.error = "failed", one_line(exc)
            step.seconds = round(self.clock() - started, 2)
        print(f"[{self.clock() - self.start:5.0f} s] {step.status:7} {name}" + (f": {step.error}" if step.error
              else ""), flush=True)
        self.write()
        return step

    def finish(self, status: str, reason: str = "") -> int:
        self.status, self.reason = status, reason
        self.write()
        failed = any(s.status == "failed" for s in self.steps)
        return {"skipped": 2, "stopped": 3, "interrupted": 130}.get(status, 1 if failed else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "status": self.status, "reason": self.reason, "budget_s": self.budget_s,
                "elapsed_s": round(self.clock() - self.start, 2),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **self.info,
                "steps": jsonable(self.steps)}

    def write(self) -> None:
        from bench.report import write_json

        with self.lock:
            write_json(self.to_dict(), self.out)


def preflight() -> tuple[dict[str, Any], str]:
    """(what was found, why the check cannot run here or "")."""
    try:
        version = require_tensorrt()
    except BackendUnavailableError as exc:
        return {}, str(exc)
    try:
        gpu, capability, _ = cuda_device()
    except BackendUnavailableError as exc:
        return {"tensorrt": version}, str(exc)
    return {"tensorrt": version, "gpu": gpu, "compute_capability": capability}, ""


@contextlib.contextmanager
def photo_folder() -> Iterator[Path]:
    """A folder of links to the sample photographs: the int8 calibration images."""
    from artifacts.photos import sample_photo_paths

    with tempfile.TemporaryDirectory(prefix="glnet-device-check-calib-") as tmp:
        for photo in sample_photo_paths():
            (Path(tmp) / photo.name).symlink_to(photo)
        yield Path(tmp)


def check_model(run: Run, name: str, work: Path, calib: Path, cache: Path) -> None:
    from bench.runner import BenchOptions, Budget
    from export.formats import build
    from glnet.testing import seeded_model
    from verification.artifact import VerifyOptions, verify_artifact

    onnx = work / f"{name}.onnx"
    exported = run.step(f"{name} export", lambda: build("onnxruntime", seeded_model(name), onnx),
                        needs("export", name))
    timing = BenchOptions(batches=(1, 8), device="cuda", warmup=Budget(seconds=1.0, minimum=3),
                          measure=Budget(seconds=3.0, minimum=10))
    for precision in PRECISIONS:
        engine = work / f"{name}_{precision}.engine"
        options: dict[str, Any] = {"timing_cache": cache, **({"tf32": False} if precision == "fp32" else {})}
        make = partial(build, f"tensorrt-{precision}", onnx, engine, calib=calib if precision == "int8" else None,
                       **options)
        built = run.step(f"{name} {precision} build", make, needs("build", name), after=exported)

        def verify(built: Step = built, engine: Path = engine) -> Any:
            report = verify_artifact(engine, onnx, VerifyOptions(shapes=engine_shapes(built.result.manifest)))
            if not report.passed:
                failures = "; ".join(f"{'x'.join(map(str, r.shape))}: {', '.join(r.failures)}"
                                     for r in report.results if not r.passed)
                raise StepFailed(f"{engine.name} does not match {onnx.name} ({failures})", report)
            return report

        run.step(f"{name} {precision} verify", verify, needs("verify", name), after=built)
        run.step(f"{name} {precision} bench", partial(timed, engine, timing), needs("bench", name), after=built)
        run.step(f"{name} {precision} CUDA graph on/off", partial(compare_graphs, engine), needs("bench", name),
                 after=built)


def engine_shapes(manifest: Any) -> list[tuple[int, int, int, int]]:
    """The shapes `glnet-export tensorrt` verifies an engine at (verification.metrics.shapes_to_verify_engine),
    its metadata read from the engine's manifest."""
    from artifacts.metadata import ArtifactMetadata
    from verification.metrics import shapes_to_verify_engine

    return shapes_to_verify_engine(ArtifactMetadata.from_props(manifest.metadata), manifest.profiles[0])


def compare_graphs(engine: Path, batches: tuple[int, ...] = (1, 8), rounds: int = 10) -> dict[str, Any]:
    """The runner with and without CUDA graphs, timed in alternating blocks (bench.runner.interleave;
    host time, copies included: what an application calling `infer` sees). bench's own TensorRT
    timing runs its own sessions, not the runner, so the graphs are compared here."""
    import runtimes
    from bench.runner import default_size, interleave, paired_ratio
    from bench.timing import make_inputs

    found: dict[str, Any] = {}
    with runtimes.load(engine, device="cuda", cuda_graph=False) as plain, \
            runtimes.load(engine, device="cuda", cuda_graph=True) as graph:
        for batch in batches:
            blocks: dict[str, list[float]] = {}
            inputs = make_inputs((batch, 3, *default_size(plain)), seed=batch)
            stats = interleave({"no graph": plain.infer, "graph": graph.infer}, inputs, rounds, per_round=5,
                               blocks=blocks)
            found[f"batch {batch}"] = {**stats, "graph / no graph p50": paired_ratio(blocks, "graph", "no graph")}
        found["notes"] = list(getattr(graph, "notes", []))  # a shape whose capture failed ran without a graph
    return found


def timed(engine: Path, options: Any) -> Any:
    """bench_artifact, failing the step when a batch size did not run (bench records it, not raises)."""
    from bench.runner import bench_artifact

    bench = bench_artifact(engine, options)
    errors = [f"batch {r.batch}: {r.error}" for r in bench.results if r.error]
    if errors:
        raise StepFailed("; ".join(errors), bench)
    return bench


def watchdog(run: Run, seconds: float) -> threading.Timer:
    """Ends the process `seconds` from now, after writing what was done (a build cannot be interrupted)."""
    def stop() -> None:
        print(f"stopped by the watchdog after {seconds:.0f} s (budget {run.budget_s:.0f} s)", file=sys.stderr)
        running = [s for s in run.steps if s.status == "running"]
        for step in running:
            step.status, step.error = "failed", f"stopped by the watchdog {seconds:.0f} s after the start"
        os._exit(run.finish("stopped", f"still running {running[0].name if running else 'the set-up'} "
                                       f"{seconds:.0f} s after the start"))

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated variants (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="time budget in seconds (default: 450)")
    parser.add_argument("--grace-s", type=float, default=25.0, help="the watchdog ends the run this long after "
                        "the budget (default: 25)")
    parser.add_argument("--json", type=Path, default=None, help=default_help("device-check"))
    args = parser.parse_args(argv)
    run = Run(args.budget_s, args.json or results_path("device-check"))
    found, why = preflight()
    run.info.update(found)
    if why:
        print(f"device check skipped: {why}")
        return run.finish("skipped", why)
    timer = watchdog(run, args.budget_s + args.grace_s)
    from bench.sysinfo import collect_device_info

    run.info["device"] = collect_device_info(idle_sample_s=0)
    run.info["tf32"] = "off for fp32"
    run.info["cuda_graph"] = "compared on and off"
    try:
        with tempfile.TemporaryDirectory(prefix="glnet-device-check-") as tmp, photo_folder() as calib:
            for name in args.models.split(","):
                check_model(run, name.strip(), Path(tmp), calib, Path(tmp) / "timing.cache")
    except KeyboardInterrupt:
        return run.finish("interrupted", "Ctrl-C")
    finally:
        timer.cancel()
    return run.finish("complete")


if __name__ == "__main__":
    raise SystemExit(main())
