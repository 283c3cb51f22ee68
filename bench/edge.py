"""What edge users size a device by, measured for one artifact in a fresh process.

Load time (reading the file through `runtimes.load` and making it ready for the benched
shape: OpenVINO compiles it), the first inference after that, the process's peak resident
memory, and on TensorRT the GPU memory the engine takes.

Why a child process per artifact: a process's peak resident memory (VmHWM) only grows,
so measured in the benchmark's own process every artifact would carry the ones before it
(and PyTorch, and the exporter). `python -m bench.edge` imports only numpy, `runtimes`
and the one back-end the file needs; its peak right after that import is reported as
`baseline_rss_mb`, so `peak_rss_mb - baseline_rss_mb` is what the model itself costs.
A fresh process also makes the load time and first inference those of an application
starting up: nothing compiled or cached by an earlier load in the same process.

    python -m bench.edge ARTIFACT --shape 1,3,224,224 [--device cpu] [--threads N]
                         [--precision fp32] [--runs 3]

prints one JSON line (prefixed `MARKER`) with the `EdgeFigures`. `measure_in_child` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from artifacts.tegra import read_text

MIB = 2**20
MARKER = "glnet-export-edge: "
STATUS = Path("/proc/self/status")


@dataclass
class EdgeFigures:
    """One artifact at one input shape, from a fresh process; None where not measured,
    with the reason in `not_measured` (keyed by the field's name). Memory in MiB."""

    shape: list[int]
    load_seconds: float | None = None  # runtimes.load + prepare(shape): ready to run that shape
    first_inference_ms: float | None = None  # the first infer call after that
    warm_ms: float | None = None  # median of the few runs after it, in the same fresh process
    baseline_rss_mb: float | None = None  # peak resident after importing the runtime, before the file
    peak_rss_mb: float | None = None  # peak resident after loading and running
    gpu_memory_mb: float | None = None  # TensorRT: device memory taken (cudaMemGetInfo before/after)
    gpu_context_mb: float | None = None  # TensorRT: the execution context's own scratch memory
    not_measured: dict[str, str] = field(default_factory=dict)


def memory_kib(status: Path = STATUS) -> dict[str, int]:
    """The Vm* lines of /proc/self/status in KiB (VmRSS: resident now, VmHWM: its peak)."""
    out = {}
    for line in read_text(status).splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def peak_rss_mb(status: Path = STATUS) -> float | None:
    """This process's peak resident memory in MiB: VmHWM, else getrusage's ru_maxrss."""
    hwm = memory_kib(status).get("VmHWM")
    if hwm is not None:
        return hwm / 1024
    try:
        import resource
    except ImportError:  # not on a Unix
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def import_backend(backend: str) -> None:
    """Import what loading a file of `backend` imports, so that the baseline includes it
    (TensorRT: also torch and the CUDA context, which the runner allocates through)."""
    from artifacts import backends

    if backend == "onnxruntime":
        backends.import_onnxruntime()
    elif backend == "openvino":
        backends.import_openvino()
    elif backend == "tensorrt":
        backends.require_tensorrt()
        import torch

        torch.cuda.init()


def cuda_free_bytes(device: str) -> int:
    """Free memory of the GPU `device` names ("cuda", "cuda:1"; "cpu" for TensorRT: the first)."""
    import torch

    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    return int(torch.cuda.mem_get_info(index)[0])


def measure(path: str | Path, shape: Sequence[int], device: str = "cpu", threads: int | None = None,
            precision: str | None = None, runs: int = 3, load: Callable[..., Any] | None = None,
            prepare_backend: Callable[[str], None] = import_backend,
            gpu_free: Callable[[str], int] = cuda_free_bytes, status: Path = STATUS) -> EdgeFigures:
    """Load `path`, run it once (the first inference) and `runs` times more, in this process:
    meant for a fresh one (`main`). `load`, `prepare_backend` and `gpu_free` are injectable."""
    import runtimes

    from .timing import make_inputs

    shape = tuple(int(s) for s in shape)
    figures = EdgeFigures(list(shape))
    backend = runtimes.SUFFIXES.get(Path(path).suffix.lower(), "")
    prepare_backend(backend)
    inputs = make_inputs(shape, buffers=2, seed=1)
    figures.baseline_rss_mb = peak_rss_mb(status)
    on_gpu = backend == "tensorrt"
    free_before = gpu_free(device) if on_gpu else None
    start = time.perf_counter()
    runner = (load or runtimes.load)(path, device=device, threads=threads, precision=precision)
    try:
        runner.prepare(shape)
        figures.load_seconds = time.perf_counter() - start
        start = time.perf_counter()
        runner.infer(inputs[0])
        figures.first_inference_ms = (time.perf_counter() - start) * 1e3
        warm = []
        for i in range(runs):
            start = time.perf_counter()
            runner.infer(inputs[(i + 1) % len(inputs)])
            warm.append((time.perf_counter() - start) * 1e3)
        figures.warm_ms = statistics.median(warm) if warm else None
        figures.peak_rss_mb = peak_rss_mb(status)
        if on_gpu and free_before is not None:
            figures.gpu_memory_mb = (free_before - gpu_free(device)) / MIB
            context = getattr(runner, "device_memory_bytes", None)
            figures.gpu_context_mb = context / MIB if context is not None else None
        else:
            figures.not_measured["gpu_memory_mb"] = f"{backend or 'this runtime'} runs on the CPU here"
    finally:
        runner.close()
    if figures.peak_rss_mb is None:
        figures.not_measured["peak_rss_mb"] = "no /proc/self/status or getrusage on this system"
    return figures


def measure_in_child(path: str | Path, shape: Sequence[int], device: str = "cpu", threads: int | None = None,
                     precision: str | None = None, runs: int = 3, timeout: float = 900.0) -> EdgeFigures:
    """`measure` in a fresh `python -m bench.edge` process; a failure is recorded, not raised."""
    argv = [sys.executable, "-m", "bench.edge", str(path), "--shape", ",".join(map(str, shape)),
            "--device", device, "--runs", str(runs)]
    if threads:
        argv += ["--threads", str(threads)]
    if precision:
        argv += ["--precision", precision]
    # The child imports this very copy of the package, installed or not.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                    env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return _failed(shape, f"the measuring process ran over {timeout:.0f} s")
    lines = [line[len(MARKER):] for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return _failed(shape, f"the measuring process failed: {said[-1] if said else f'exit {done.returncode}'}")
    return EdgeFigures(**json.loads(lines[-1]))


def _failed(shape: Sequence[int], reason: str) -> EdgeFigures:
    keys = ("load_seconds", "first_inference_ms", "peak_rss_mb", "gpu_memory_mb")
    return EdgeFigures(list(shape), not_measured={key: reason for key in keys})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.edge", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--shape", required=True, help="N,3,H,W")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--precision")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        figures = measure(args.artifact, [int(s) for s in args.shape.split(",")], args.device, args.threads,
                          args.precision, args.runs)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        from artifacts.errors import one_line

        print(one_line(exc), file=sys.stderr)
        return 1
    print(MARKER + json.dumps(asdict(figures)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
