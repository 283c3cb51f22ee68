"""Requests in flight, per back-end: what latency and throughput modes run.

A pool takes inputs with `submit` (blocking while all its `parallel` requests are busy)
and records each request's latency. Latency mode is a pool of one. Throughput mode is
each back-end's own way of keeping the machine busy: onnxruntime sessions in threads,
OpenVINO's AsyncInferQueue on a model compiled with the THROUGHPUT hint, TensorRT engines
on their own CUDA streams (timed with CUDA events, so GPU compute comes apart from copies).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from artifacts.errors import OptionError
from runtimes.base import Runner, RuntimeInputError


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compile_openvino(path: Path, device: str = "cpu", threads: int | None = None, precision: str | None = None,
                     shape: tuple[int, ...] | None = None, **config: Any) -> Any:
    """An OpenVINO CompiledModel with extra settings (PERF_COUNT, PERFORMANCE_HINT), compiled by
    the runtime's own runner (the precision it asks, static per shape when `shape`)."""
    from runtimes.openvino import OpenVinoRunner

    runner = OpenVinoRunner(path, device, threads=threads, precision=precision, static_shapes=shape is not None,
                            **config)
    return runner.compiled_model(shape)


class Pool:
    """Requests in flight: `submit` blocks while all `parallel` of them are busy."""

    parallel = 1

    def __init__(self) -> None:
        self.latencies: list[float] = []  # ms per completed request
        self.gpu_ms: list[float] = []  # TensorRT: compute time per request

    def submit(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncPool(Pool):
    """One request at a time through `Runner.infer`, timed on the host (latency mode)."""

    def __init__(self, run: Callable[[np.ndarray], object]) -> None:
        super().__init__()
        self._run = run

    def submit(self, x: np.ndarray) -> None:
        start = time.perf_counter()
        self._run(x)
        self.latencies.append((time.perf_counter() - start) * 1e3)

    def drain(self) -> None:
        pass


class ThreadPool(Pool):
    """One thread per runner (onnxruntime sessions release the GIL while they compute)."""

    def __init__(self, runners: list[Runner]) -> None:
        super().__init__()
        self.parallel, self._runners = len(runners), runners
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=len(runners))
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._work, args=(r,), daemon=True) for r in runners]
        for thread in self._threads:
            thread.start()

    def _work(self, runner: Runner) -> None:
        while (x := self._queue.get()) is not None:
            try:
                start = time.perf_counter()
                runner.infer(x)
                self.latencies.append((time.perf_counter() - start) * 1e3)
            except Exception as exc:  # noqa: BLE001 - raised in the main thread by submit/drain
                self._error = self._error or exc
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, x: np.ndarray) -> None:
        self._check()
        self._queue.put(x)

    def drain(self) -> None:
        self._queue.join()
        self._check()

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        for runner in self._runners:
            runner.close()


class OpenVinoPool(Pool):
    """OpenVINO's AsyncInferQueue on a model compiled with the THROUGHPUT hint."""

    def __init__(self, compiled: Any, parallel: int | None) -> None:
        super().__init__()
        from artifacts.backends import import_openvino

        self._queue = import_openvino().AsyncInferQueue(compiled, parallel or 0)  # 0: the plugin's optimum
        self.parallel = len(self._queue)
        self._queue.set_callback(lambda _request, start: self.latencies.append((time.perf_counter() - start) * 1e3))

    def submit(self, x: np.ndarray) -> None:
        self._queue.start_async({0: x}, time.perf_counter())

    def drain(self) -> None:
        self._queue.wait_all()

    def close(self) -> None:
        self._queue.wait_all()  # never free requests that are still running (after Ctrl-C)


class TensorRTPool(Pool):
    """Engines on their own CUDA streams, fed round-robin. A pool of one (latency mode) is
    timed on the host like the other back-ends; with several in flight a request's time is
    its CUDA events' (copies and compute), since the host sees it complete only later."""

    def __init__(self, path: Path, device: str, shape: tuple[int, ...], parallel: int) -> None:
        super().__init__()
        self.parallel, self._next = parallel, 0
        self._sessions = [TrtSession(path, device) for _ in range(parallel)]
        for session in self._sessions:
            session.prepare(shape)
        self._submitted = 0.0

    def _collect(self, session: TrtSession) -> None:
        total, compute = session.wait()
        host = (time.perf_counter() - self._submitted) * 1e3
        self.latencies.append(host if self.parallel == 1 else total)
        self.gpu_ms.append(compute)

    def submit(self, x: np.ndarray) -> None:
        session = self._sessions[self._next % self.parallel]
        self._next += 1
        if session.busy:
            self._collect(session)
        self._submitted = time.perf_counter()
        session.enqueue(x)

    def drain(self) -> None:
        for session in self._sessions:
            if session.busy:
                self._collect(session)

    def close(self) -> None:
        for session in self._sessions:
            if session.busy:
                session.wait()


def make_pool(runner: Runner, path: Path | None, shape: tuple[int, ...], mode: str, parallel: int | None = None,
              threads: int | None = None, device: str = "cpu", precision: str | None = None) -> Pool:
    """The pool that runs `runner`'s artifact in `mode`; `parallel` requests in flight in
    throughput mode (None: what suits the back-end and the machine)."""
    if runner.backend == "tensorrt":
        if path is None:
            raise OptionError("TensorRT timing needs the engine file")
        # Latency mode too: CUDA events give the compute time apart from the copies.
        return TensorRTPool(path, device, shape, 1 if mode == "latency" else parallel or 2)
    if mode == "latency":
        return SyncPool(runner.infer)
    if path is None:
        raise OptionError(f"throughput mode needs an artifact file ({runner.backend} has none)")
    if runner.backend == "openvino":
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if parallel:
            config["NUM_STREAMS"] = parallel
        static = shape if getattr(runner, "per_shape", False) else None  # as the runner compiles it
        return OpenVinoPool(compile_openvino(path, device, threads, precision, static, **config), parallel)
    if runner.backend == "onnxruntime":
        from runtimes.onnxruntime import OnnxRuntimeRunner

        # The sessions share the threads: with 2 threads, 2 sessions of 1 thread each.
        total = threads or cpu_count()
        n = parallel or total
        return ThreadPool([OnnxRuntimeRunner(path, device, threads=max(1, total // n)) for _ in range(n)])
    raise OptionError(f"throughput mode is not supported for {runner.backend}")


class TrtSession:
    """One TensorRT engine, execution context and CUDA stream; a request is timed by CUDA
    events, so GPU compute (execute) is measured apart from the host-device copies.

    Each session deserializes its own engine: with dynamic shapes a context needs an
    optimization profile of its own, and the engines here have one (like trtexec --streams).
    """

    def __init__(self, path: Path, device: str = "cuda") -> None:
        import tensorrt as trt
        import torch

        from runtimes.tensorrt import LoadedEngine

        loaded = LoadedEngine(path, device, check=False)  # the runner being timed has checked it
        self._torch = torch
        self.device = loaded.torch_device
        self._runtime, self.engine = loaded.runtime, loaded.engine
        with torch.cuda.device(self.device):
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self._outputs = [n for n in names if n != self._input]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self._buffers: dict[str, Any] = {}
        self._pinned: dict[int, Any] = {}
        self.busy = False

    def _torch_dtype(self, name: str) -> Any:
        return self._torch.from_numpy(np.empty(0, self._dtypes[name])).dtype

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Set the input shape and allocate device buffers (and pinned host outputs) for it."""
        torch = self._torch
        if not self.context.set_input_shape(self._input, shape):
            raise RuntimeInputError(f"the TensorRT engine does not take input shape {'x'.join(map(str, shape))} "
                                    "(outside its optimization profile)")
        self._buffers = {self._input: torch.empty(shape, dtype=self._torch_dtype(self._input), device=self.device)}
        for name in self._outputs:
            dims = self.context.get_tensor_shape(name)
            out_shape = tuple(int(dims[i]) for i in range(len(dims)))
            self._buffers[name] = torch.empty(out_shape, dtype=self._torch_dtype(name), device=self.device)
            self._buffers["host:" + name] = torch.empty(out_shape, dtype=self._torch_dtype(name)).pin_memory()
        for name in [self._input, *self._outputs]:
            self.context.set_tensor_address(name, self._buffers[name].data_ptr())
        self._pinned.clear()

    def enqueue(self, x: np.ndarray) -> None:
        """Copy in, execute, copy out, all queued on this session's stream."""
        torch = self._torch
        if id(x) not in self._pinned:  # page-locked copies, made once per rotating buffer
            self._pinned[id(x)] = torch.from_numpy(x.astype(self._dtypes[self._input], copy=False)).pin_memory()
        start, copied, computed, done = self._events
        with torch.cuda.stream(self.stream):
            start.record()
            self._buffers[self._input].copy_(self._pinned[id(x)], non_blocking=True)
            copied.record()
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeInputError("TensorRT failed to enqueue the inference")
            computed.record()
            for name in self._outputs:
                self._buffers["host:" + name].copy_(self._buffers[name], non_blocking=True)
            done.record()
        self.busy = True

    def wait(self) -> tuple[float, float]:
        """(request time including copies, GPU compute time) in ms, once the request is done."""
        start, copied, computed, done = self._events
        done.synchronize()
        self.busy = False
        return start.elapsed_time(done), copied.elapsed_time(computed)


