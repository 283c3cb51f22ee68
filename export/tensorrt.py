"""ONNX -> serialized TensorRT engine (TensorRT 10 and 11), with a JSON manifest beside it.

The precision lives in the ONNX (`export.precision`: fp16 casts or Q/DQ int8) and the
engine is built strongly typed, the only mode TensorRT 11 has. On TensorRT 10 the old
FP16/INT8 builder flags remain as a fallback (`typing="weak"`, or automatically when a
strongly typed build fails). One optimization profile covers the dynamic batch and
resolution; a timing cache file is read and written back so later builds are faster.
`tensorrt` is imported only inside the build: planning and validation need no GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artifacts.atomic import atomic_outputs, check_writable
from artifacts.backends import cuda_device, require_tensorrt
from artifacts.errors import ExportError, OptionError, one_line
from artifacts.metadata import ArtifactMetadata, MetadataError

from .onnxruntime import refuse_runtime_only
from .precision import PRECISIONS, PrecisionOptions, PrecisionResult, write_precision_onnx
from .trt_profiles import (
    EngineManifest,
    Profile,
    Shape,
    check_opset,
    manifest_path,
    onnx_input,
    parse_version,
    resolve_profile,
    sha256_file,
)

TYPINGS = ("auto", "strong", "weak")
NO_TRT_HINT = "use --onnx-only to write the precision-ready ONNX"
Progress = Callable[[str], None]


@dataclass
class TensorRTBuildOptions:
    precision: str = "fp32"
    calibration: Path | Sequence[Path] | None = None  # int8: folder of images or image paths
    calib_samples: int = 64
    calib_method: str = "minmax"
    min_shape: Shape | None = None  # None: from the ONNX (see trt_profiles.default_profile)
    opt_shape: Shape | None = None
    max_shape: Shape | None = None
    workspace_mb: int | None = None  # None: TensorRT's default (the GPU's memory)
    timing_cache: Path | None = None  # read when present, written back after the build
    version_compatible: bool = False
    typing: str = "auto"  # auto: strong, falling back to builder flags on TensorRT 10

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.typing not in TYPINGS:
            raise OptionError(f"--typing must be one of {', '.join(TYPINGS)}, not {self.typing!r}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise OptionError(f"--workspace must be >= 1 MB, not {self.workspace_mb}")
        if self.precision == "int8" and self.calibration is None:
            raise OptionError("int8 needs calibration images: --calib DIR")

    def precision_options(self) -> PrecisionOptions:
        return PrecisionOptions(self.precision, self.calibration, self.calib_samples, self.calib_method)


@dataclass
class BuildPlan:
    """What a build will do, decided from the ONNX file alone (no TensorRT needed)."""

    source: Path
    input_name: str
    input_dims: tuple[int | str | None, ...]
    opset: int
    profile: Profile
    metadata: dict[str, str]


@dataclass
class TensorRTBuildResult:
    path: Path
    manifest_path: Path
    manifest: EngineManifest
    precision_onnx: PrecisionResult | None
    size_bytes: int
    seconds: float
    timing_cache: Path | None
    notes: list[str] = field(default_factory=list)


def plan_build(source: str | Path, options: TensorRTBuildOptions) -> BuildPlan:
    options.validate()
    source = Path(source)
    if not source.is_file():
        raise OptionError(f"{source}: no such ONNX file")
    name, dims, opset, props = onnx_input(source)
    try:
        meta = ArtifactMetadata.from_props(props)
        size = meta.input_size
        refuse_runtime_only(meta, source, "tensorrt")
    except MetadataError:
        size = (224, 224)  # not a glnet-export file: dynamic H and W need --min/--opt/--max to be meaningful
    profile = resolve_profile(name, dims, size, options.min_shape, options.opt_shape, options.max_shape)
    return BuildPlan(source, name, dims, opset, profile, props)


def _parse_and_build(onnx_path: Path, plan: BuildPlan, options: TensorRTBuildOptions, strong: bool,
                     keep_fp32: Sequence[str]) -> tuple[bytes, bytes | None]:
    """The serialized engine and timing cache; ExportError with TensorRT's reason on failure."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors or 'no reason given'}")
    config = builder.create_builder_config()
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    p = plan.profile
    profile.set_shape(p.input, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    config.add_optimization_profile(profile)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if not strong and options.precision != "fp32":  # TensorRT 10's precision flags
        config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the Q/DQ nodes give the scales
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        keep = tuple(keep_fp32)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name.startswith(keep):  # layers are named after their ONNX node (plus suffixes)
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float32, trt.float16):
                        layer.set_output_type(j, trt.float32)
    cache_data = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_data)
    config.set_timing_cache(cache, ignore_mismatch=True)  # a cache from another GPU is ignored, not fatal
    plan_bytes = builder.build_serialized_network(network, config)
    if plan_bytes is None:
        raise ExportError("TensorRT could not build the engine (see its messages above)")
    timing = config.get_timing_cache()
    return bytes(plan_bytes), (bytes(timing.serialize()) if timing is not None else None)


def build_engine(source: str | Path, output: str | Path | None = None, options: TensorRTBuildOptions | None = None,
                 progress: Progress | None = None) -> TensorRTBuildResult:
    """Build `output` (default: SOURCE.engine) and its manifest from the ONNX file `source`."""
    options = options or TensorRTBuildOptions()
    plan = plan_build(source, options)
    version = require_tensorrt(NO_TRT_HINT)
    check_opset(plan.opset, version)
    major = parse_version(version)[0]
    if options.typing == "weak" and major >= 11:
        raise OptionError(f"TensorRT {version} has no weak typing (builder precision flags): use --typing strong")
    gpu, capability, _ = cuda_device()
    output = Path(output) if output else plan.source.with_suffix(".engine")
    check_writable(output)
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    notes: list[str] = []

    precision_result = None
    onnx_path = plan.source
    if options.precision != "fp32":
        say(f"writing the {options.precision} ONNX")
        precision_result = write_precision_onnx(
            plan.source, output.with_suffix(f".{options.precision}.onnx"), options.precision_options())
        onnx_path = precision_result.path
        notes += precision_result.notes
    keep = precision_result.kept_fp32 if precision_result else []
    strong = options.typing != "weak"
    try:
        say(f"building the engine with TensorRT {version} ({'strongly' if strong else 'weakly'} typed)")
        engine, cache = _parse_and_build(onnx_path, plan, options, strong, keep)
    except ExportError as exc:
        if not (options.typing == "auto" and major == 10):
            raise
        notes.append(f"strongly typed build failed ({one_line(exc)}); built with TensorRT 10's precision flags")
        strong = False
        say("retrying with TensorRT 10's builder precision flags")
        engine, cache = _parse_and_build(onnx_path, plan, options, strong, keep)

    metadata = dict(plan.metadata)
    if metadata:
        metadata["precision"] = options.precision
    manifest = EngineManifest(
        tensorrt_version=version, gpu_name=gpu, compute_capability=capability, precision=options.precision,
        typing="strong" if strong else "weak", profiles=[plan.profile], source_onnx=str(plan.source),
        source_sha256=sha256_file(plan.source), built_from=str(onnx_path) if onnx_path != plan.source else "",
        version_compatible=options.version_compatible, workspace_mb=options.workspace_mb, metadata=metadata,
    )
    manifest_file = manifest_path(output)
    with atomic_outputs(output, manifest_file) as (engine_temp, manifest_temp):
        engine_temp.write_bytes(engine)
        manifest_temp.write_text(manifest.to_json(), encoding="utf-8")
    if options.timing_cache and cache:
        with atomic_outputs(options.timing_cache) as (cache_temp,):
            cache_temp.write_bytes(cache)
    return TensorRTBuildResult(
        path=output, manifest_path=manifest_file, manifest=manifest, precision_onnx=precision_result,
        size_bytes=output.stat().st_size, seconds=time.perf_counter() - start, timing_cache=options.timing_cache,
        notes=notes,
    )

