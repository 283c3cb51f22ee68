"""TensorRT back-end: run a serialized engine with the TensorRT 10 Python API.

Deserialize, create an execution context, set the input shape (engines have dynamic
profiles), bind tensor addresses, `execute_async_v3` on a CUDA stream. GPU memory, the
stream and CUDA graphs come from `torch.cuda` (`TorchCuda`): PyTorch is already a
dependency of the project, its API is typed, and it shares the CUDA primary context with
TensorRT. On a Jetson that means NVIDIA's PyTorch wheel for JetPack (the PyPI aarch64 wheel
has no CUDA). Every output comes back by name (`infer_all`; `infer` gives the first), so
feature engines keep their stage maps and slots.

With `cuda_graph=True` the runner replays each input shape's enqueue as a CUDA graph, as
`trtexec --useCudaGraph` does: on a Jetson's ARM cores a small batch is bound by the CPU
launching kernels, and a graph launches them all at once. `prepare(shape)` runs the shape
once and captures its graph ahead (a benchmark's cold run or an app's first request then
replays); without it the first call at a shape runs normally and then captures. Later calls
at that shape copy the input into the same buffer and replay. A shape whose capture fails
runs without a graph, with a note.

Before deserializing, the JSON manifest written beside the engine is checked against the
installed TensorRT and the GPU, so a mismatch stops with one clear line instead of a
deserialization crash. `tensorrt` and `torch` are imported only inside functions:
importing this module needs neither TensorRT nor a GPU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from artifacts.backends import cuda_device, require_tensorrt
from artifacts.engine_manifest import (
    EngineManifest,
    ManifestError,
    Profile,
    check_manifest,
    format_shape,
    manifest_path,
)
from artifacts.errors import one_line
from artifacts.metadata import ArtifactMetadata, MetadataError

from .base import Runner, RuntimeInputError, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

MAX_SHAPES = 8  # input shapes whose buffers (and CUDA graphs) a runner keeps


def read_manifest(engine: Path) -> EngineManifest | None:
    path = manifest_path(engine)
    if not path.is_file():
        return None
    return EngineManifest.from_json(path.read_text(encoding="utf-8"), where=str(path))


def _sizes(dims: trt.Dims) -> tuple[int, ...]:
    """A trt.Dims as a tuple (Dims indexes like a sequence but is not typed as iterable)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class TorchCuda:
    """The CUDA work the runner does (device memory, copies, a stream, graphs), through
    torch.cuda on GPU `index`. The runner's tests give it a fake with the same methods."""

    def __init__(self, index: int) -> None:
        import torch

        self._torch = torch
        self.device = torch.device("cuda", index)

    @contextmanager
    def active(self) -> Iterator[None]:
        with self._torch.cuda.device(self.device):
            yield

    def stream(self) -> Any:
        return self._torch.cuda.Stream(self.device)

    def handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self._torch.empty(shape, dtype=self._torch.from_numpy(np.empty(0, dtype)).dtype, device=self.device)

    def address(self, buffer: Any) -> int:
        return int(buffer.data_ptr())

    def upload(self, buffer: Any, x: np.ndarray, stream: Any) -> None:
        with self._torch.cuda.stream(stream):
            buffer.copy_(self._torch.from_numpy(x))

    def download(self, buffer: Any, stream: Any) -> np.ndarray:
        stream.synchronize()
        return buffer.float().cpu().numpy()

    def capture(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        """A CUDA graph of what `enqueue` queues on `stream` (captured, not run). Thread-local
        capture mode: another thread's CUDA calls during the capture do not break it."""
        graph = self._torch.cuda.CUDAGraph()
        with self._torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            enqueue()
        return graph

    def replay(self, graph: Any, stream: Any) -> None:
        with self._torch.cuda.stream(stream):
            graph.replay()


class LoadedEngine:
    """A deserialized engine with its TensorRT runtime (which must outlive it), its manifest,
    what the manifest check noted, and the GPU it lives on. The runner and the benchmark's
    CUDA-event sessions load engines through this one path."""

    def __init__(self, path: str | Path, device: str = "cuda", check: bool = True) -> None:
        path = Path(path)
        version = require_tensorrt()
        import tensorrt as trt

        gpu, capability, index = cuda_device("cuda" if device in ("cpu", "gpu") else device)
        self.notes: list[str] = []
        self.manifest = read_manifest(path)
        if self.manifest is not None and check:
            self.notes += check_manifest(self.manifest, path, version, gpu, capability)
        elif self.manifest is None:
            self.notes.append(f"{path} has no manifest beside it: TensorRT version and GPU not checked")
        self.cuda = TorchCuda(index)
        self.gpu = gpu
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        # A version-compatible plan carries the lean runtime that runs it: host code TensorRT
        # runs only when allowed. Allowed always (where this TensorRT has the switch), manifest
        # or not: only a plan built version-compatible holds such code, the plan cannot be
        # asked before it is deserialized, and a plan is trusted as much as the plugins and
        # kernels it already brings. Without it such an engine, moved without its JSON,
        # would not load at all.
        if hasattr(self.runtime, "engine_host_code_allowed"):
            self.runtime.engine_host_code_allowed = True
        if self.manifest is not None and self.manifest.dla_core is not None and hasattr(self.runtime, "DLA_core"):
            self.runtime.DLA_core = self.manifest.dla_core
        with self.cuda.active():
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ManifestError(f"{path}: TensorRT {version} could not deserialize the engine (built by another "
                                "TensorRT version or for another GPU? see TensorRT's message above)")
        self.engine = engine

    @property
    def torch_device(self) -> Any:
        return self.cuda.device


@dataclass
class _Binding:
    """The device buffers of one input shape, and its CUDA graph once captured."""

    input: Any
    outputs: dict[str, Any] = field(default_factory=dict)
    graph: Any = None
    captured: bool = False  # capture was tried (it may have failed)


class TensorRTRunner(Runner):
    """A TensorRT engine on one GPU. `device` "cpu" (the default of `runtimes.load`) means the first GPU."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda", check: bool = True, cuda_graph: bool = False,
                 **_: Any) -> None:
        super().__init__()
        import tensorrt as trt

        loaded = LoadedEngine(path, device, check)
        self.notes, self.manifest = loaded.notes, loaded.manifest
        self.cuda_graph = cuda_graph
        self._cuda = loaded.cuda
        self.device = f"cuda:{loaded.torch_device.index} ({loaded.gpu})"
        self._runtime, engine = loaded.runtime, loaded.engine
        with self._cuda.active():
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = self._cuda.stream()
        if hasattr(self._context, "nvtx_verbosity"):  # engines are built DETAILED (export.tensorrt)
            self._context.nvtx_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY  # the default build's cost
        self._bindings: OrderedDict[tuple[int, ...], _Binding] = OrderedDict()
        self._bound: tuple[int, ...] | None = None  # the shape whose buffers the context is set to
        self._profile: dict[str, Profile] = {}  # each input's optimization profile 0, as the engine holds it
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(d if d >= 0 else None for d in _sizes(engine.get_tensor_shape(name)))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(TensorSpec(name, shape, dtype))
                low, opt, high = (_sizes(dims) for dims in engine.get_tensor_profile_shape(name, 0))
                self._profile[name] = Profile(name, low, opt, high)
            else:
                self.outputs.append(TensorSpec(name, shape, dtype))
        if self.manifest is not None:
            self.precision = self.manifest.runs_in  # "tf32": an fp32 engine built with TF32 allowed
            try:
                self.metadata = ArtifactMetadata.from_props(self.manifest.metadata)
            except MetadataError:
                self.metadata = None
        else:
            self.precision = "unknown"

    @property
    def device_memory_bytes(self) -> int:
        """GPU memory the execution context needs for activations (TensorRT's own figure; the
        weights are not in it). `device_memory_size_v2` from TensorRT 10.1, the older name before."""
        size = getattr(self._engine, "device_memory_size_v2", None)
        return int(self._engine.device_memory_size if size is None else size)

    def _check_profile(self, name: str, shape: tuple[int, ...]) -> None:
        """One line for a shape the engine cannot take. The rank first: `prepare` gets a bare
        tuple that no array check has seen, and a 3-D shape is no profile question."""
        profile = self._profile[name]
        if len(shape) != len(profile.min):
            raise RuntimeInputError(f"input shape {format_shape(shape) or '()'} has {len(shape)} axes; "
                                    f"the engine's input {name!r} has {len(profile.min)} (N x 3 x H x W)")
        if not profile.accepts(shape):
            raise RuntimeInputError(
                f"input shape {format_shape(shape)} is outside the engine's profile "
                f"{format_shape(profile.min)} .. {format_shape(profile.max)} (rebuild with other --min/--max)")

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        name = self.inputs[0].name
        if not self._context.set_input_shape(name, shape):
            raise RuntimeInputError(f"TensorRT rejected input shape {shape} for {name!r}")

    def _binding(self, shape: tuple[int, ...]) -> _Binding:
        """The buffers of `shape`, made on first use; the oldest shape's go past MAX_SHAPES."""
        if shape in self._bindings:
            self._bindings.move_to_end(shape)
            return self._bindings[shape]
        self._set_shape(shape)  # to read the output shapes
        self._bound = None
        binding = _Binding(self._cuda.empty(shape, self.inputs[0].dtype))
        for out in self.outputs:
            binding.outputs[out.name] = self._cuda.empty(_sizes(self._context.get_tensor_shape(out.name)), out.dtype)
        self._bindings[shape] = binding
        if len(self._bindings) > MAX_SHAPES:
            self._bindings.popitem(last=False)
        return binding

    def _bind(self, shape: tuple[int, ...], binding: _Binding) -> None:
        """Set the context to `shape` and its buffers. Also before replaying a graph: the
        context then stays as it was when the graph was captured."""
        if self._bound == shape:
            return
        self._set_shape(shape)
        self._context.set_tensor_address(self.inputs[0].name, self._cuda.address(binding.input))
        for name, buffer in binding.outputs.items():
            self._context.set_tensor_address(name, self._cuda.address(buffer))
        self._bound = shape

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._cuda.handle(self._stream)):
            raise RuntimeInputError("TensorRT failed to enqueue the inference (see its message above)")

    def _capture(self, shape: tuple[int, ...], binding: _Binding) -> None:
        """Capture the enqueue of `shape` (just run once, so TensorRT's per-shape setup is done)."""
        binding.captured = True
        try:
            binding.graph = self._cuda.capture(self._stream, self._enqueue)
        except Exception as exc:  # noqa: BLE001 - any failure: run this shape without a graph
            self.notes.append(f"CUDA graph capture failed at input {'x'.join(map(str, shape))} "
                              f"({one_line(exc)}): that shape runs without a CUDA graph")

    def prepare(self, shape: tuple[int, ...]) -> None:
        """With CUDA graphs: make the buffers of `shape`, run it once (on whatever the new input
        buffer holds: TensorRT's per-shape setup must not be captured) and capture its graph
        now, so that the first call at that shape replays. Without them nothing: the first
        call makes the buffers (`bench` prepares this runner but times engines through its
        own sessions, so buffers made here would only hold GPU memory)."""
        if not self.cuda_graph:
            return
        if self._closed:
            raise RuntimeInputError(f"{self.backend} runner is closed")
        shape = tuple(int(d) for d in shape)
        self._check_profile(self.inputs[0].name, shape)
        with self._cuda.active():
            binding = self._binding(shape)
            if not binding.captured:
                self._bind(shape, binding)
                self._enqueue()
                self._capture(shape, binding)

    def _run(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run on `x` and copy back only the outputs `names`: each copy is a device-to-host
        transfer, so the hot path (`infer`) fetches just the one it returns."""
        spec = self.inputs[0]
        shape = tuple(int(d) for d in x.shape)
        self._check_profile(spec.name, shape)
        with self._cuda.active():
            binding = self._binding(shape)
            self._cuda.upload(binding.input, x.astype(spec.dtype, copy=False), self._stream)
            self._bind(shape, binding)
            if binding.graph is not None:
                self._cuda.replay(binding.graph, self._stream)
            else:
                self._enqueue()
                if self.cuda_graph and not binding.captured:
                    self._capture(shape, binding)
            return {name: self._cuda.download(binding.outputs[name], self._stream) for name in names}

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(x, [out.name for out in self.outputs])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        first = self.outputs[0].name
        return self._run(x, [first])[first]

    def _close(self) -> None:
        self._bindings.clear()  # graphs and buffers before the context they were made for
        del self._context  # before the engine it came from
        del self._engine
        del self._runtime
