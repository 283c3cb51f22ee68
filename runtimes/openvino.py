"""OpenVINO back-end: an IR (.xml + .bin), or anything `Core.read_model` reads.

The trap this module exists for (FIELD_NOTES trap 5): on a CPU with AVX512_BF16 the CPU
plugin computes in bf16 unless told otherwise, silently, with a ~1% output error. So the
runner never reports the precision it was asked for: it reads back the precision hint the
compiled model settled on and the precision each compiled layer actually runs in, and
combines that with what the IR stores (fp16-compressed weights, int8 FakeQuantize nodes).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from glnet_export.metadata import ArtifactMetadata, MetadataError

from .base import BackendUnavailableError, Runner, RuntimeInputError, TensorSpec

RT_INFO_KEY = "glnet_export"  # the IR's rt_info section holding ArtifactMetadata's fields
# What users may ask for -> OpenVINO's INFERENCE_PRECISION_HINT value.
PRECISION_HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
_OV_FLOAT = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "f16": "fp16", "float16": "fp16"}
# From finest to coarsest: the precision reported is the coarsest one that is involved.
_ORDER = ("fp32", "fp16", "bf16", "int8")
# Compiled-layer types that do arithmetic; reorders, reshapes and constants say nothing.
_STATIC_CACHE = 4  # compiled shapes kept by a per-shape (int8 + dynamic) runner
_COMPUTE_LAYERS = frozenset({"Convolution", "FullyConnected", "MatMul", "Softmax", "MVN", "RMS", "Eltwise",
                             "Subgraph", "Reduce", "ScaledDotProductAttention", "Interpolate"})


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'glnet-export[openvino]'") from None
    return openvino


def coarsest(*precisions: str) -> str:
    return max(precisions, key=lambda p: _ORDER.index(p) if p in _ORDER else 0)


def read_metadata(model: Any) -> ArtifactMetadata | None:
    """ArtifactMetadata from the IR's rt_info (written by `export.openvino`), None if absent."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return None
    props = {}
    for key in ArtifactMetadata.__dataclass_fields__:
        if model.has_rt_info([RT_INFO_KEY, key]):
            props[key] = model.get_rt_info([RT_INFO_KEY, key]).astype(str)
    try:
        return ArtifactMetadata.from_props(props)
    except MetadataError:
        return None


def stored_precision(model: Any) -> tuple[str, int]:
    """What the IR stores: "int8" with its FakeQuantize count, else "fp16" / "fp32" weights."""
    fake_quantize, constants = 0, Counter[str]()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            fake_quantize += 1
        elif kind == "Constant":
            constants[_OV_FLOAT.get(op.get_element_type().get_type_name(), "other")] += 1
    if fake_quantize:
        return "int8", fake_quantize
    # A few fp32 constants survive fp16 compression (eps, scalars); the weights decide.
    return ("fp16" if constants["fp16"] > constants["fp32"] else "fp32"), 0


def _spec(port: Any, names: tuple[str, ...]) -> TensorSpec:
    dims: list[int | str | None] = []
    for axis, dim in enumerate(port.get_partial_shape()):
        # OpenVINO keeps no names for dynamic dimensions; use the exporter's by position.
        dims.append(dim.get_length() if dim.is_static else (names[axis] if axis < len(names) else None))
    return TensorSpec(port.get_any_name(), tuple(dims), port.get_element_type().to_dtype().name)


class OpenVinoRunner(Runner):
    """One compiled model and one infer request; a dynamic IR takes any shape per call.

    Attributes beyond `Runner`: `requested_precision` (what was asked, None = the
    plugin's default), `float_precision` (what the float layers run in), `weights_precision`
    (what the IR stores: fp32 / fp16 / int8), `int8_nodes` (FakeQuantize count) and
    `layer_precisions` (compiled compute layers per runtime precision).
    """

    backend = "openvino"
    # One InferRequest serves one call at a time: each concurrent caller borrows its own
    # from a pool (a CompiledModel may be shared by threads); the per-shape path locks.
    thread_safe = True

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None, **config: Any) -> None:
        super().__init__()
        ov = import_openvino()
        core = ov.Core()
        self.device = device.upper()
        available = core.available_devices  # e.g. ["CPU", "GPU.0", "GPU.1"]
        if self.device not in available and self.device not in {d.split(".")[0] for d in available}:
            raise BackendUnavailableError(f"OpenVINO has no {self.device} device here (available: "
                                          f"{', '.join(available) or 'none'})")
        if precision is not None and precision.lower() not in PRECISION_HINTS:
            raise RuntimeInputError(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)} or None "
                                    f"(the device's default), not {precision!r}")
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise RuntimeInputError(f"{path}: OpenVINO cannot read it: {_first_line(exc)}") from None
        self.metadata = read_metadata(model)
        self.weights_precision, self.int8_nodes = stored_precision(model)
        self.requested_precision = precision

        settings: dict[str, Any] = dict(config)
        if precision is not None:
            settings["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision.lower()]
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(model, self.device, settings)
        except RuntimeError as exc:
            raise RuntimeInputError(f"{path}: OpenVINO cannot compile it for {self.device}: "
                                    f"{_first_line(exc)}") from None
        self.layer_precisions = self._layer_precisions()
        self.float_precision = self._float_precision()
        if self.int8_nodes:
            self.precision = "int8"
        else:
            self.precision = coarsest(self.float_precision, self.weights_precision)

        batch_names = ("batch", 3, "height", "width")
        self.inputs = [_spec(p, batch_names) for p in self.compiled.inputs]  # type: ignore[arg-type]
        self.outputs = [_spec(p, ("batch",)) for p in self.compiled.outputs]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(self.compiled.create_infer_request())
        self._static_lock = threading.Lock()
        # OpenVINO's CPU plugin segfaults inside its JIT kernels when an int8 model with a
        # dynamic input runs at small sizes on AMX CPUs (openvino issue #37577; seen here
        # with batch <= 8 at 32 x 32; static int8 is fine). So such a model is compiled
        # static for each input shape it meets instead, at the cost of one compile per shape.
        self.per_shape = bool(self.int8_nodes) and self.device.startswith("CPU") and any(
            not isinstance(d, int) for d in self.inputs[0].shape)
        self._model, self._settings, self._core = model, settings, core
        self._static: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def _layer_precisions(self) -> dict[str, int]:
        """Compiled compute layers per precision they run in (what the plugin really did)."""
        counts: Counter[str] = Counter()
        try:
            runtime = self.compiled.get_runtime_model()
        except RuntimeError:  # some plugins expose no execution graph
            return {}
        for op in runtime.get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or "runtimePrecision" not in info:
                continue
            if info["layerType"].astype(str) in _COMPUTE_LAYERS:
                counts[info["runtimePrecision"].astype(str)] += 1
        return dict(counts)

    def _float_precision(self) -> str:
        try:
            hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            declared = _OV_FLOAT.get(hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint), "fp32")
        except RuntimeError:  # a plugin without the property: judge by the layers alone
            declared = "fp32"
        ran = [_OV_FLOAT[p] for p in self.layer_precisions if p in _OV_FLOAT]
        # The layers are the truth when the plugin reports them: a hint of bf16 on a graph
        # the plugin kept in f32 is f32, and an f32 hint with a bf16 layer is not f32.
        return coarsest(*ran) if ran else declared

    def _static_request(self, shape: tuple[int, ...]) -> Any:
        if shape in self._static:
            self._static.move_to_end(shape)
            return self._static[shape]
        model = self._model.clone()
        model.reshape({0: list(shape)})
        request = self._core.compile_model(model, self.device, self._settings).create_infer_request()
        self._static[shape] = request
        if len(self._static) > _STATIC_CACHE:
            self._static.popitem(last=False)
        return request

    def _run(self, x: np.ndarray, names: list[int]) -> list[np.ndarray]:
        """Outputs `names` (indices) of one call; copies, as a request reuses its buffers."""
        if self.per_shape:
            with self._static_lock:
                request = self._static_request(x.shape)
                request.infer({0: x})
                return [request.get_output_tensor(i).data.copy() for i in names]
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({0: x})
            return [request.get_output_tensor(i).data.copy() for i in names]
        finally:
            self._idle.put(request)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, [0])[0]

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self._run(x, list(range(len(self.outputs))))
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def _close(self) -> None:
        self._static.clear()
        # The requests hold the compiled model: drop them so that closing frees it.
        while not self._idle.empty():
            self._idle.get_nowait()
        del self.compiled, self._model


def _first_line(exc: BaseException) -> str:
    # OpenVINO's messages start with "Exception from src/...cpp:84:"; the cause is further down.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [exc.__class__.__name__])[0][:300]
