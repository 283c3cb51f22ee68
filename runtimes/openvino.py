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

from artifacts.backends import BackendUnavailableError, import_openvino
from artifacts.metadata import ArtifactMetadata
from artifacts.openvino_ir import read_ir_metadata

from .base import Runner, RuntimeInputError, TensorSpec

# What users may ask for -> OpenVINO's INFERENCE_PRECISION_HINT value.
PRECISION_HINTS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16"}
_OV_FLOAT = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "f16": "fp16", "float16": "fp16"}
# From finest to coarsest: the precision reported is the coarsest one that is involved.
_ORDER = ("fp32", "fp16", "bf16", "int8")
# Compiled-layer types that do arithmetic; reorders, reshapes and constants say nothing.
_STATIC_CACHE = 8  # compiled input shapes a per-shape runner keeps (least recently used go)
_COMPUTE_LAYERS = frozenset({"Convolution", "FullyConnected", "MatMul", "Softmax", "MVN", "RMS", "Eltwise",
                             "Subgraph", "Reduce", "ScaledDotProductAttention", "Interpolate"})


def check_device(device: str, core: Any = None) -> str:
    """`device` in OpenVINO's spelling (upper case); BackendUnavailableError if this machine has none."""
    core = core or import_openvino().Core()
    name = device.upper()
    available = core.available_devices  # e.g. ["CPU", "GPU.0", "GPU.1"]
    if name not in available and name not in {d.split(".")[0] for d in available}:
        raise BackendUnavailableError(f"OpenVINO has no {name} device here "
                                      f"(available: {', '.join(available) or 'none'})")
    return name


def coarsest(*precisions: str) -> str:
    return max(precisions, key=lambda p: _ORDER.index(p) if p in _ORDER else 0)


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


def precision_to_ask(meta: ArtifactMetadata | None, precision: str | None) -> str | None:
    """`precision` if given, else the compute precision the IR was built for (None: the device's choice)."""
    if precision is not None or meta is None:
        return precision
    return meta.compute_precision or None


def _spec(port: Any, names: tuple[str, ...]) -> TensorSpec:
    dims: list[int | str | None] = []
    for axis, dim in enumerate(port.get_partial_shape()):
        # OpenVINO keeps no names for dynamic dimensions; use the exporter's by position.
        dims.append(dim.get_length() if dim.is_static else (names[axis] if axis < len(names) else None))
    return TensorSpec(port.get_any_name(), tuple(dims), port.get_element_type().to_dtype().name)


class _Compiled:
    """One compiled model and its idle infer requests (one request serves one call at a time)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run(self, x: np.ndarray, outputs: list[int]) -> list[np.ndarray]:
        """Outputs (indices) of one call; copies, as a request reuses its buffers."""
        try:
            request = self.idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({0: x})
            return [request.get_output_tensor(i).data.copy() for i in outputs]
        finally:
            self.idle.put(request)


class OpenVinoRunner(Runner):
    """An IR compiled for the input shapes it meets; a dynamic IR takes any shape per call.

    A dynamic IR is compiled static for each input shape (`static_shapes`, the default):
    the CPU plugin's dynamic-shape path re-infers every node's shape on every call and
    keeps more layout conversions, which costs glnet_4g 15-20% of its latency at batch 1
    (README, Benchmarks). A new shape costs one compile (about 1.5 s for glnet_4g); the last
    few shapes stay compiled. `static_shapes=False` compiles the dynamic IR once.

    Attributes beyond `Runner`: `requested_precision` (what was asked, None = the
    plugin's default), `float_precision` (what the float layers run in), `weights_precision`
    (what the IR stores: fp32 / fp16 / int8), `int8_nodes` (FakeQuantize count),
    `layer_precisions` (compiled compute layers per runtime precision).

    The IR runs as written: no graph rewrite happens here (`export.passes`). The one thing
    taken from the file is the compute precision it was built for (`ArtifactMetadata.
    compute_precision`, e.g. "f32" for an IR with its residual convolutions folded): when
    `precision` is None the runner asks the device for it, as the README tells apps to do,
    because OpenVINO's CPU plugin does not read a precision hint from an IR's rt_info.
    """

    backend = "openvino"
    # One InferRequest serves one call at a time: each concurrent caller borrows its own
    # from its shape's pool (a CompiledModel may be shared by threads).
    thread_safe = True

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = None, static_shapes: bool = True,
                 **config: Any) -> None:
        super().__init__()
        ov = import_openvino()
        core = ov.Core()
        self.device = check_device(device, core)
        if precision is not None and precision.lower() not in PRECISION_HINTS:
            raise RuntimeInputError(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)} or None "
                                    f"(the device's default), not {precision!r}")
        try:
            model = core.read_model(str(path))
        except RuntimeError as exc:
            raise RuntimeInputError(f"{path}: OpenVINO cannot read it: {_first_line(exc)}") from None
        self.metadata = read_ir_metadata(model)
        self.weights_precision, self.int8_nodes = stored_precision(model)
        precision = precision_to_ask(self.metadata, precision)
        self.requested_precision = precision

        settings: dict[str, Any] = dict(config)
        if precision is not None:
            settings["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision.lower()]
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        self._model, self._settings, self._core = model, settings, core
        batch_names = ("batch", 3, "height", "width")
        self.inputs = [_spec(p, batch_names) for p in model.inputs]  # type: ignore[arg-type]
        self.outputs = [_spec(p, ("batch",)) for p in model.outputs]
        dynamic = any(not isinstance(d, int) for d in self.inputs[0].shape)
        # OpenVINO's CPU plugin also segfaults inside its JIT kernels when an int8 model
        # with a dynamic input runs at small sizes on AMX CPUs (openvino issue #37577; seen
        # here with batch <= 8 at 32 x 32; static int8 is fine), so int8 is always per shape.
        forced = bool(self.int8_nodes) and self.device.startswith("CPU")
        self.per_shape = dynamic and (forced or static_shapes)
        self._static: OrderedDict[tuple[int, ...], _Compiled] = OrderedDict()
        self._static_lock = threading.Lock()
        # Compiled now, so that a model the device cannot run fails at load time and the
        # precision it runs in is known: the IR itself, or its first static shape.
        try:
            if self.per_shape:
                entry = self._compiled_for(self._first_shape())
            else:
                entry = _Compiled(core.compile_model(model, self.device, settings))
        except RuntimeError as exc:
            raise RuntimeInputError(f"{path}: OpenVINO cannot compile it for {self.device}: "
                                    f"{_first_line(exc)}") from None
        self._dynamic = None if self.per_shape else entry
        self.compiled = entry.compiled
        self.layer_precisions = self._layer_precisions()
        self.float_precision = self._float_precision()
        if self.int8_nodes:
            self.precision = "int8"
        else:
            self.precision = coarsest(self.float_precision, self.weights_precision)

    def _first_shape(self) -> tuple[int, ...]:
        """Batch 1 at the size the artifact was exported at (metadata), for dynamic dims."""
        size = self.metadata.input_size if self.metadata else (224, 224)
        fill = {0: 1, 2: size[0], 3: size[1]}
        return tuple(d if isinstance(d, int) else fill.get(i, 1) for i, d in enumerate(self.inputs[0].shape))

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

    def _compiled_for(self, shape: tuple[int, ...]) -> _Compiled:
        # The lock covers the lookup and a compile, not inference: threads with
        # different shapes wait only while a new shape compiles.
        with self._static_lock:
            if shape in self._static:
                self._static.move_to_end(shape)
                return self._static[shape]
            model = self._model.clone()
            model.reshape({0: list(shape)})
            entry = _Compiled(self._core.compile_model(model, self.device, self._settings))
            self._static[shape] = entry
            if len(self._static) > _STATIC_CACHE:
                self._static.popitem(last=False)  # requests in use keep their model alive
            return entry

    @property
    def compiled_shapes(self) -> list[tuple[int, ...]]:
        """The input shapes compiled so far by a per-shape runner, least recently used first."""
        with self._static_lock:
            return list(self._static)

    def idle_requests(self) -> list[int]:
        """Idle infer requests pooled per compiled shape: one is made per concurrent caller."""
        with self._static_lock:
            return [entry.idle.qsize() for entry in self._static.values()]

    def compiled_model(self, shape: tuple[int, ...] | None = None) -> Any:
        """The OpenVINO CompiledModel that runs inputs of `shape`: compiled for it when this
        runner compiles per shape, else the one model it has (for benchmarks' own requests)."""
        if self.per_shape and shape is not None:
            return self._compiled_for(tuple(shape)).compiled
        return self.compiled

    def prepare(self, shape: tuple[int, ...]) -> None:
        if self.per_shape:
            self._compiled_for(tuple(shape))

    def _run(self, x: np.ndarray, names: list[int]) -> list[np.ndarray]:
        entry = self._compiled_for(tuple(x.shape)) if self.per_shape else self._dynamic
        assert entry is not None
        return entry.run(x, names)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, [0])[0]

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self._run(x, list(range(len(self.outputs))))
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def _close(self) -> None:
        # The requests hold the compiled models: drop them all so that closing frees them.
        self._static.clear()
        self._dynamic = None
        del self.compiled, self._model


def _first_line(exc: BaseException) -> str:
    # OpenVINO's messages start with "Exception from src/...cpp:84:"; the cause is further down.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or [exc.__class__.__name__])[0][:300]
