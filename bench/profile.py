"""Per-layer profiles from each back-end's own profiler, as one kind of table.

onnxruntime's profiler (a separate session with `enable_profiling`, so the runner being
timed is never slowed by it), OpenVINO's performance counters (`PERF_COUNT`,
`request.profiling_info`) and TensorRT's `IProfiler`. Each profile skips one warm-up run:
first-run allocations and kernel choices are not the steady state.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimes import SUFFIXES
from runtimes.base import RuntimeInputError

from .pools import TrtSession, compile_openvino
from .timing import make_inputs


@dataclass
class LayerTime:
    name: str
    op_type: str
    ms: float  # mean time per inference
    share: float  # fraction of the profile's total
    detail: str = ""  # onnxruntime: provider; OpenVINO: kernel (with its precision); TensorRT: -


@dataclass
class OpTypeTime:
    op_type: str
    layers: int
    ms: float
    share: float


@dataclass
class LayerProfile:
    backend: str
    shape: tuple[int, ...]
    runs: int
    total_ms: float  # sum of the layers' times per inference (without the runtime's gaps between them)
    layers: list[LayerTime]  # hottest first
    by_type: list[OpTypeTime] = field(default_factory=list)  # hottest first
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_totals(cls, backend: str, shape: tuple[int, ...], runs: int,
                    totals: dict[str, tuple[str, float, str]], keep: int = 40) -> LayerProfile:
        """`totals`: layer name -> (op type, ms summed over `runs`, detail); keeps the `keep` hottest layers."""
        total = sum(ms for _, ms, _ in totals.values()) / runs
        scale = 1 / total if total > 0 else 0.0
        layers = sorted((LayerTime(name, op, ms / runs, ms / runs * scale, detail)
                         for name, (op, ms, detail) in totals.items()), key=lambda t: -t.ms)
        types: dict[str, list[float]] = defaultdict(list)
        for layer in layers:
            types[layer.op_type].append(layer.ms)
        by_type = sorted((OpTypeTime(op, len(v), sum(v), sum(v) * scale) for op, v in types.items()),
                         key=lambda t: -t.ms)
        return cls(backend, shape, runs, total, layers[:keep], by_type)


def profile_layers(path: str | Path, shape: tuple[int, ...], runs: int = 10, threads: int | None = None,
                   device: str = "cpu", precision: str | None = None) -> LayerProfile:
    """Where the time of one inference of `shape` goes, per layer and per operator type."""
    path = Path(path)
    backend = SUFFIXES.get(path.suffix.lower())
    if backend == "onnxruntime":
        return profile_onnxruntime(path, shape, runs, threads, device)
    if backend == "openvino":
        return profile_openvino(path, shape, runs, threads, device, precision)
    if backend == "tensorrt":
        return profile_tensorrt(path, shape, runs, device)
    raise RuntimeInputError(f"{path}: per-layer profiling is not supported for this artifact type")


def profile_onnxruntime(path: Path, shape: tuple[int, ...], runs: int, threads: int | None,
                        device: str) -> LayerProfile:
    from artifacts.backends import import_onnxruntime
    from runtimes.onnxruntime import PROVIDERS, session_options

    ort = import_onnxruntime()
    opts = session_options(threads)
    opts.enable_profiling = True
    inputs = make_inputs(shape, buffers=2)
    with tempfile.TemporaryDirectory(prefix="glnet-profile-") as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=PROVIDERS.get(device, PROVIDERS["cpu"]))
        name = session.get_inputs()[0].name
        for i in range(runs + 1):
            session.run(None, {name: inputs[i % len(inputs)]})
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first_warm = starts[1] if len(starts) > 1 else 0
    totals: dict[str, tuple[str, float, str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first_warm:
            continue
        layer = e["name"].removesuffix("_kernel_time")
        args = e.get("args", {})
        _, ms, _ = totals.get(layer, ("", 0.0, ""))
        totals[layer] = (args.get("op_name", "?"), ms + e["dur"] / 1e3, args.get("provider", ""))
    profile = LayerProfile.from_totals("onnxruntime", shape, runs, totals)
    profile.notes.append("onnxruntime's profiler adds a small cost to every node, so the many tiny nodes (Cast, "
                         "Shape, Less) look heavier than they are; compare the large ones")
    return profile


def profile_openvino(path: Path, shape: tuple[int, ...], runs: int, threads: int | None, device: str,
                     precision: str | None) -> LayerProfile:
    import openvino as ov

    # Reshaped to the static shape: per-node counters of a dynamic model include the shape
    # inference of every node, and int8 models run static anyway (runtimes.openvino).
    compiled = compile_openvino(path, device, threads, precision, shape=shape, PERF_COUNT="YES")
    request = compiled.create_infer_request()
    inputs = make_inputs(shape, buffers=2)
    request.infer({0: inputs[0]})
    totals: dict[str, tuple[str, float, str]] = {}
    for i in range(runs):
        request.infer({0: inputs[i % len(inputs)]})
        for info in request.profiling_info:  # the counters of the last inference only
            if info.status != ov.ProfilingInfo.Status.EXECUTED:
                continue
            _, ms, _ = totals.get(info.node_name, ("", 0.0, ""))
            totals[info.node_name] = (info.node_type, ms + info.real_time.total_seconds() * 1e3, info.exec_type)
    profile = LayerProfile.from_totals("openvino", shape, runs, totals)
    profile.notes.append("OpenVINO layers are the compiled graph's fused nodes; the detail column is the kernel "
                         "and the precision it ran in")
    return profile


def _trt_layer_types(engine: Any) -> dict[str, str]:
    """Layer name -> type from the engine inspector. Only an engine built with DETAILED
    profiling verbosity has them (`glnet-export tensorrt` builds every engine so); others list names only."""
    import tensorrt as trt

    try:
        info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    except Exception:  # noqa: BLE001 - an engine without inspector information has names only
        return {}
    return {layer["Name"]: layer.get("LayerType", "?") for layer in info.get("Layers", []) if isinstance(layer, dict)}


def _type_from_name(name: str) -> str:
    """Guess a layer type from TensorRT's name for it ("node_Conv_12 + node_Relu_13", "{ForeignNode[...]}")."""
    if "ForeignNode" in name:
        return "Myelin (fused)"
    kinds = list(dict.fromkeys(re.findall(r"node_([A-Za-z]+?)_\d", name)))
    return "+".join(kinds) or "?"


def profile_tensorrt(path: Path, shape: tuple[int, ...], runs: int, device: str) -> LayerProfile:
    import tensorrt as trt

    session = TrtSession(path, device)
    session.prepare(shape)
    totals: dict[str, tuple[str, float, str]] = {}
    types = _trt_layer_types(session.engine)

    class Profiler(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)
            self.record = False

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            if self.record:
                op = types.get(layer_name) or _type_from_name(layer_name)
                totals[layer_name] = (op, totals.get(layer_name, ("", 0.0, ""))[1] + ms, "")

    profiler = Profiler()
    session.context.profiler = profiler
    inputs = make_inputs(shape, buffers=2)
    for i in range(runs + 1):
        profiler.record = i > 0
        session.enqueue(inputs[i % len(inputs)])
        session.wait()
    profile = LayerProfile.from_totals("tensorrt", shape, runs, totals)
    if not types:
        profile.notes.append("layer types guessed from names: the engine was built without DETAILED profiling "
                             "verbosity (rebuild it with `glnet-export tensorrt` for exact ones)")
    return profile
