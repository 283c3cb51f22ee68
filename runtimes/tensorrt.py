"""TensorRT back-end: run a serialized engine with the TensorRT 10 Python API.

Deserialize, create an execution context, set the input shape (engines have dynamic
profiles), bind tensor addresses, `execute_async_v3` on a CUDA stream. GPU memory and the
stream come from `torch.cuda`: PyTorch is already a dependency of the project, its API is
typed, and it shares the CUDA primary context with TensorRT. On a Jetson that means
NVIDIA's PyTorch wheel for JetPack (the PyPI aarch64 wheel has no CUDA).

Before deserializing, the JSON manifest written beside the engine is checked against the
installed TensorRT and the GPU, so a mismatch stops with one clear line instead of a
deserialization crash. `tensorrt` is imported only inside functions: importing this module
needs neither TensorRT nor a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from artifacts.backends import cuda_device, require_tensorrt
from artifacts.engine_manifest import EngineManifest, ManifestError, check_manifest, manifest_path
from artifacts.metadata import ArtifactMetadata, MetadataError

from .base import Runner, RuntimeInputError, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

def read_manifest(engine: Path) -> EngineManifest | None:
    path = manifest_path(engine)
    if not path.is_file():
        return None
    return EngineManifest.from_json(path.read_text(encoding="utf-8"), where=str(path))


def _sizes(dims: trt.Dims) -> tuple[int, ...]:
    """A trt.Dims as a tuple (Dims indexes like a sequence but is not typed as iterable)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class LoadedEngine:
    """A deserialized engine with its TensorRT runtime (which must outlive it), its manifest,
    what the manifest check noted, and the GPU it lives on. The runner and the benchmark's
    CUDA-event sessions load engines through this one path."""

    def __init__(self, path: str | Path, device: str = "cuda", check: bool = True) -> None:
        path = Path(path)
        version = require_tensorrt()
        import tensorrt as trt
        import torch

        gpu, capability, index = cuda_device("cuda" if device in ("cpu", "gpu") else device)
        self.notes: list[str] = []
        self.manifest = read_manifest(path)
        if self.manifest is not None and check:
            self.notes += check_manifest(self.manifest, path, version, gpu, capability)
        elif self.manifest is None:
            self.notes.append(f"{path} has no manifest beside it: TensorRT version and GPU not checked")
        self.torch_device = torch.device("cuda", index)
        self.gpu = gpu
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if self.manifest is not None and self.manifest.version_compatible:
            self.runtime.engine_host_code_allowed = True  # the lean runtime embedded in the plan
        with torch.cuda.device(index):
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ManifestError(f"{path}: TensorRT {version} could not deserialize the engine (built by another "
                                "TensorRT version or for another GPU? see TensorRT's message above)")
        self.engine = engine


class TensorRTRunner(Runner):
    """A TensorRT engine on one GPU. `device` "cpu" (the default of `runtimes.load`) means the first GPU."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda", check: bool = True, **_: Any) -> None:
        super().__init__()
        import tensorrt as trt
        import torch

        loaded = LoadedEngine(path, device, check)
        self.notes, self.manifest = loaded.notes, loaded.manifest
        self._torch_device = loaded.torch_device
        self.device = f"cuda:{loaded.torch_device.index} ({loaded.gpu})"
        self._runtime, engine = loaded.runtime, loaded.engine
        with torch.cuda.device(self._torch_device):
            self._engine = engine
            self._context = engine.create_execution_context()
            self._stream = torch.cuda.Stream(self._torch_device)
        self._profile: dict[str, list[tuple[int, ...]]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(d if d >= 0 else None for d in _sizes(engine.get_tensor_shape(name)))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(TensorSpec(name, shape, dtype))
                self._profile[name] = [_sizes(dims) for dims in engine.get_tensor_profile_shape(name, 0)]
            else:
                self.outputs.append(TensorSpec(name, shape, dtype))
        if self.manifest is not None:
            self.precision = self.manifest.precision
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
        low, _, high = self._profile[name]
        if any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
            fmt = "x".join
            raise RuntimeInputError(
                f"input shape {fmt(map(str, shape))} is outside the engine's profile "
                f"{fmt(map(str, low))} .. {fmt(map(str, high))} (rebuild with other --min/--max)")

    def _infer(self, x: np.ndarray) -> np.ndarray:
        import torch

        spec = self.inputs[0]
        self._check_profile(spec.name, x.shape)
        with torch.cuda.device(self._torch_device):
            host = torch.from_numpy(x.astype(spec.dtype, copy=False))
            inp = host.to(self._torch_device)
            if not self._context.set_input_shape(spec.name, x.shape):
                raise RuntimeInputError(f"TensorRT rejected input shape {x.shape} for {spec.name!r}")
            self._context.set_tensor_address(spec.name, inp.data_ptr())
            outputs = []
            for out in self.outputs:
                shape = _sizes(self._context.get_tensor_shape(out.name))
                dtype = torch.from_numpy(np.empty(0, out.dtype)).dtype
                buffer = torch.empty(shape, dtype=dtype, device=self._torch_device)
                self._context.set_tensor_address(out.name, buffer.data_ptr())
                outputs.append(buffer)
            self._stream.wait_stream(torch.cuda.current_stream(self._torch_device))  # the input copy
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeInputError("TensorRT failed to enqueue the inference (see its message above)")
            self._stream.synchronize()
            return outputs[0].float().cpu().numpy()

    def _close(self) -> None:
        del self._context  # before the engine it came from
        del self._engine
        del self._runtime
