"""A stand-in for the `tensorrt` module and the CUDA side of the TensorRT runner, for tests
on machines without TensorRT or a GPU (all of ours).

Only what `export.tensorrt` and `runtimes.tensorrt` call, under TensorRT 10's own names and
with the behaviour its API documents (tensorrt-stubs 10.13, tensorrt_bindings/tensorrt.pyi):
TF32 is on in a new builder config; `set_timing_cache(cache, ignore_mismatch)` returns
whether the cache was taken; `can_run_on_DLA(layer)` answers per layer; the ONNX parser
names layers after their nodes, suffixed `_<n>` when a node needs several, and writes
`[ONNX Layer: <node>]` into their metadata (onnx-tensorrt ImporterContext.cpp). A CUDA
graph records the enqueued work with the shapes and addresses of its capture, and replays
exactly that. `REAL_NAMES` lists every TensorRT name used here; a test checks them
against the stubs.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REAL_NAMES = {
    "BuilderFlag": ["TF32", "FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "VERSION_COMPATIBLE", "GPU_FALLBACK"],
    "ProfilingVerbosity": ["LAYER_NAMES_ONLY", "DETAILED", "NONE"],
    "DeviceType": ["GPU", "DLA"],
    "MemoryPoolType": ["WORKSPACE"],
    "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED"],
    "TensorIOMode": ["INPUT", "OUTPUT"],
    "IBuilderConfig": ["set_flag", "clear_flag", "get_flag", "set_memory_pool_limit", "add_optimization_profile",
                       "create_timing_cache", "set_timing_cache", "get_timing_cache", "can_run_on_DLA",
                       "profiling_verbosity", "builder_optimization_level", "default_device_type", "DLA_core"],
    "Builder": ["num_DLA_cores", "create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network"],
    "ILayer": ["name", "metadata", "precision", "num_outputs", "get_output", "set_output_type"],
    "Runtime": ["engine_host_code_allowed", "DLA_core", "deserialize_cuda_engine"],
    "ICudaEngine": ["num_io_tensors", "get_tensor_name", "get_tensor_shape", "get_tensor_dtype", "get_tensor_mode",
                    "get_tensor_profile_shape", "create_execution_context"],
    "IExecutionContext": ["set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3",
                          "nvtx_verbosity"],
    "ITimingCache": ["serialize"],
}


def _enum(name: str) -> type:
    return type(name, (), {member: f"{name}.{member}" for member in REAL_NAMES[name]})


BuilderFlag, ProfilingVerbosity, DeviceType = _enum("BuilderFlag"), _enum("ProfilingVerbosity"), _enum("DeviceType")
MemoryPoolType, TensorIOMode = _enum("MemoryPoolType"), _enum("TensorIOMode")


# --- the build side -------------------------------------------------------------------


@dataclass
class Tensor:
    dtype: str = "float32"


@dataclass
class Layer:
    name: str
    metadata: str = ""
    precision: str | None = None
    outputs: list[Tensor] = field(default_factory=lambda: [Tensor()])
    output_types: dict[int, str] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> Tensor:
        return self.outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


@dataclass
class Network:
    layers: list[Layer]
    flags: int = 0

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> Layer:
        return self.layers[index]


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+timed"


class BuilderConfig:
    def __init__(self, accepts_cache: bool, dla_unsupported: set[str]) -> None:
        self.flags = {BuilderFlag.TF32}  # "TF32 ... Enabled by default."
        self.pools: dict[str, int] = {}
        self.profiles: list[Any] = []
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY  # TensorRT's default
        self.builder_optimization_level = 3
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.cache: TimingCache | None = None
        self.ignore_mismatch: list[bool] = []
        self._accepts, self._dla_unsupported = accepts_cache, dla_unsupported

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: str) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: Any) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(bytes(data))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        """Like TensorRT: a cache from another device is refused unless ignore_mismatch."""
        self.ignore_mismatch.append(ignore_mismatch)
        if self._accepts or ignore_mismatch:
            self.cache = cache
            return True
        return False

    def get_timing_cache(self) -> TimingCache | None:
        return self.cache

    def can_run_on_DLA(self, layer: Layer) -> bool:  # noqa: N802 - TensorRT's name
        return layer.name not in self._dla_unsupported


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (lo, opt, hi)


class Builder:
    def __init__(self, world: World) -> None:
        self.world = world
        self.num_DLA_cores = world.dla_cores

    def create_network(self, flags: int) -> Network:
        self.world.network = Network([Layer(**vars(layer)) for layer in self.world.layers], flags)
        return self.world.network

    def create_builder_config(self) -> BuilderConfig:
        self.world.config = BuilderConfig(self.world.accepts_cache, self.world.dla_unsupported)
        return self.world.config

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        self.world.builds += 1
        return None if self.world.fail_strong and network.flags else b"serialized engine"


class OnnxParser:
    def __init__(self, network: Network, logger: Any) -> None:
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        return True


# --- the run side ---------------------------------------------------------------------


class Context:
    """An execution context of an engine with outputs logits (N x 5) and features (2 x input)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.cuda = engine, engine.cuda
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.nvtx_verbosity = ProfilingVerbosity.DETAILED  # "the verbosity with which the engine was built"
        self.enqueued = 0  # enqueues run directly (not captured)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        assert self.shape is not None
        return (self.shape[0], 5) if name == "logits" else self.shape

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream: int) -> bool:
        memory, addresses = self.cuda.memory, dict(self.addresses)  # as captured: these buffers

        def kernel() -> None:
            x = memory[addresses["input"]]
            memory[addresses["logits"]][...] = x.mean(axis=(1, 2, 3))[:, None] * np.arange(1, 6)
            memory[addresses["features"]][...] = 2 * x

        if self.cuda.capturing is not None:
            self.cuda.capturing.append(kernel)
        else:
            kernel()
            self.enqueued += 1
        return True


class Engine:
    NAMES = ("input", "logits", "features")

    def __init__(self, cuda: FakeCuda) -> None:
        self.cuda = cuda
        self.num_io_tensors = len(self.NAMES)
        self.device_memory_size_v2 = 1 << 20
        self.contexts: list[Context] = []

    def get_tensor_name(self, index: int) -> str:
        return self.NAMES[index]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return (-1, 5) if name == "logits" else (-1, 3, -1, -1)

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_mode(self, name: str) -> str:
        return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 128, 128)]

    def create_execution_context(self) -> Context:
        self.contexts.append(Context(self))
        return self.contexts[-1]


class Runtime:
    def __init__(self, world: World) -> None:
        self.world = world
        self.engine_host_code_allowed = False  # "(Default: False)"
        self.DLA_core = -1
        self.host_code_at_deserialize: bool | None = None
        world.runtimes.append(self)

    def deserialize_cuda_engine(self, data: bytes) -> Engine:
        self.host_code_at_deserialize = getattr(self, "engine_host_code_allowed", None)
        return Engine(self.world.cuda[-1])


class OldRuntime(Runtime):
    """A TensorRT from before the lean runtime: it has no engine_host_code_allowed."""

    def __getattribute__(self, name: str) -> Any:
        if name == "engine_host_code_allowed":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "engine_host_code_allowed":  # its __init__ sets it: a TensorRT without it ignores it
            super().__setattr__(name, value)


@dataclass
class Buffer:
    address: int


class FakeCuda:
    """runtimes.tensorrt.TorchCuda's methods over numpy arrays: device memory by address."""

    def __init__(self, index: int = 0, fail_capture: str = "") -> None:
        self.device = types.SimpleNamespace(index=index)
        self.memory: dict[int, np.ndarray] = {}
        self.capturing: list[Callable[[], None]] | None = None
        self.captures = self.replays = 0
        self.fail_capture = fail_capture

    @contextmanager
    def active(self) -> Iterator[None]:
        yield

    def stream(self) -> str:
        return "stream"

    def handle(self, stream: Any) -> int:
        return 7

    def empty(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        address = 0x1000 * (len(self.memory) + 1)
        self.memory[address] = np.zeros(shape, dtype)
        return Buffer(address)

    def address(self, buffer: Buffer) -> int:
        return buffer.address

    def upload(self, buffer: Buffer, x: np.ndarray, stream: Any) -> None:
        self.memory[buffer.address][...] = x

    def download(self, buffer: Buffer, stream: Any) -> np.ndarray:
        return self.memory[buffer.address].astype(np.float32).copy()

    def capture(self, stream: Any, enqueue: Callable[[], None]) -> list[Callable[[], None]]:
        if self.fail_capture:
            raise RuntimeError(self.fail_capture)
        self.capturing = []
        try:
            enqueue()
            self.captures += 1
            return self.capturing
        finally:
            self.capturing = None

    def replay(self, graph: list[Callable[[], None]], stream: Any) -> None:
        self.replays += 1
        for kernel in graph:
            kernel()


# --- the module -------------------------------------------------------------------------


@dataclass
class World:
    """What the fake TensorRT holds for one test: the network it parses, its answers, and
    what the build did (the last network and config)."""

    version: str = "10.3.0.30"
    layers: list[Layer] = field(default_factory=lambda: [Layer("node_Conv_0")])
    dla_cores: int = 0
    dla_unsupported: set[str] = field(default_factory=set)
    accepts_cache: bool = True
    fail_strong: bool = False
    runtime: type = Runtime
    fail_capture: str = ""  # the error a CUDA graph capture raises ("": captures work)
    builds: int = 0
    network: Network | None = None
    config: BuilderConfig | None = None
    runtimes: list[Runtime] = field(default_factory=list)
    cuda: list[FakeCuda] = field(default_factory=list)

    def new_cuda(self, index: int) -> FakeCuda:
        self.cuda.append(FakeCuda(index, self.fail_capture))
        return self.cuda[-1]


def module(world: World) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = world.version  # type: ignore[attr-defined]
    for name in ("BuilderFlag", "ProfilingVerbosity", "DeviceType", "MemoryPoolType", "TensorIOMode"):
        setattr(trt, name, globals()[name])
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)  # type: ignore[attr-defined]
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None})  # type: ignore[attr-defined]
    trt.Builder = lambda logger: Builder(world)  # type: ignore[attr-defined]
    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    trt.Runtime = lambda logger: world.runtime(world)  # type: ignore[attr-defined]
    trt.Dims = tuple  # type: ignore[attr-defined]
    trt.float32, trt.float16 = "float32", "float16"  # type: ignore[attr-defined]
    trt.nptype = lambda dtype: np.dtype(dtype).type  # type: ignore[attr-defined]
    return trt


def install(monkeypatch: Any, world: World | None = None) -> World:
    """Put a fake `tensorrt` (and the CUDA checks' answers) where the code imports them."""
    world = world or World()
    monkeypatch.setitem(sys.modules, "tensorrt", module(world))
    for target in ("export.tensorrt", "runtimes.tensorrt"):
        monkeypatch.setattr(f"{target}.require_tensorrt", lambda *_a, **_k: world.version)
        monkeypatch.setattr(f"{target}.cuda_device", lambda *_a, **_k: ("Orin (nvgpu)", "8.7", 0))
    monkeypatch.setattr("runtimes.tensorrt.TorchCuda", world.new_cuda)
    return world


def fixed_stub_text(text: str) -> str:
    """tensorrt-stubs' generated .pyi as Python can parse it: a few parameters are named `in`,
    and one default-less parameter follows defaults."""
    text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)
    return text.replace("channel_axis: int)", "channel_axis: int = ...)")
