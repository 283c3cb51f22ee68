"""ONNX -> serialized TensorRT engine (TensorRT 10 and 11), with a JSON manifest beside it.

The precision lives in the ONNX (`export.precision`: fp16 casts or Q/DQ int8) and the
engine is built strongly typed, the only mode TensorRT 11 has. On TensorRT 10 the old
FP16/INT8 builder flags remain as a fallback (`typing="weak"`, or automatically when a
strongly typed build fails). One optimization profile covers the dynamic batch and
resolution; a timing cache file is read and written back so later builds are faster, and
refused when another TensorRT version or GPU wrote it.

Every build clears TF32 unless asked (`tf32`): TensorRT allows it by default on Ampere and
newer, Orin included, and an "fp32" engine would round the inputs of its convolutions and
matrix products to a 10-bit mantissa. Every build records DETAILED profiling verbosity, as
Polygraphy does: the engine inspector then reports each layer's type, precision and device
(`bench --per-layer`, the DLA placement), at the cost of NVTX annotations that the runner
turns down again for its own runs. On a Jetson (AGX/NX Orin) `dla_core` builds for a DLA
core with GPU fallback; DLA takes static shapes, fp16 and int8 only.
`tensorrt` is imported only inside the build: planning and validation need no GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from artifacts.atomic import atomic_outputs, check_writable
from artifacts.backends import cuda_device, require_tensorrt
from artifacts.errors import ExportError, OptionError, one_line
from artifacts.metadata import ArtifactMetadata, MetadataError
from artifacts.tegra import jetson_model, memory_total_bytes

from .onnxruntime import refuse_runtime_only
from .precision import PRECISIONS, PrecisionOptions, PrecisionResult, write_precision_onnx
from .trt_profiles import (
    EngineManifest,
    Profile,
    Shape,
    TimingCacheOrigin,
    check_dla_profile,
    check_opset,
    check_timing_cache,
    default_workspace_mb,
    layers_of_nodes,
    manifest_path,
    onnx_input,
    onnx_node_names,
    parse_version,
    resolve_profile,
    sha256_file,
    timing_cache_origin_path,
)

TYPINGS = ("auto", "strong", "weak")
MAX_OPT_LEVEL = 5  # TensorRT 10's highest builder optimization level (3 is its default)
NO_TRT_HINT = "use --onnx-only to write the precision-ready ONNX"
Progress = Callable[[str], None]

if TYPE_CHECKING:
    import tensorrt as trt


@dataclass
class TensorRTBuildOptions:
    precision: str = "fp32"
    calibration: Path | Sequence[Path] | None = None  # int8: folder of images or image paths
    calib_samples: int = 64
    calib_method: str = "minmax"
    min_shape: Shape | None = None  # None: from the ONNX (see trt_profiles.default_profile)
    opt_shape: Shape | None = None
    max_shape: Shape | None = None
    workspace_mb: int | None = None  # None: TensorRT's default (the GPU's memory); a quarter of a Jetson's memory
    timing_cache: Path | None = None  # read when present, written back after the build
    version_compatible: bool = False
    typing: str = "auto"  # auto: strong, falling back to builder flags on TensorRT 10
    tf32: bool = False  # allow TF32 in fp32 convolutions and matrix products (TensorRT's default; cleared here)
    opt_level: int | None = None  # builder optimization level 0..5 (None: TensorRT's default, 3)
    dla_core: int | None = None  # build for this DLA core, with GPU fallback (static shapes, fp16/int8)
    keep_float: Sequence[str] = ()  # fp16/int8: blocks (checkpoint-layout names) kept fp32 (export.precision)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.typing not in TYPINGS:
            raise OptionError(f"--typing must be one of {', '.join(TYPINGS)}, not {self.typing!r}")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise OptionError(f"--workspace must be >= 1 MB, not {self.workspace_mb}")
        if self.precision == "int8" and self.calibration is None:
            raise OptionError("int8 needs calibration images: --calib DIR")
        if self.opt_level is not None and not 0 <= self.opt_level <= MAX_OPT_LEVEL:
            raise OptionError(f"--opt-level must be within 0..{MAX_OPT_LEVEL}, not {self.opt_level}")
        if self.dla_core is not None and self.dla_core < 0:
            raise OptionError(f"--dla-core must be >= 0, not {self.dla_core}")
        if self.dla_core is not None and self.precision == "fp32":
            raise OptionError("DLA computes in fp16 or int8 only: use --precision fp16 or int8 with --dla-core")
        if self.keep_float and self.precision == "fp32":
            raise OptionError("--keep-float is for --precision fp16 or int8: an fp32 build has every block in fp32")

    def precision_options(self) -> PrecisionOptions:
        return PrecisionOptions(self.precision, self.calibration, self.calib_samples, self.calib_method,
                                keep_float=self.keep_float)


@dataclass
class BuildPlan:
    """What a build will do, decided from the ONNX file alone (no TensorRT needed)."""

    source: Path
    input_name: str
    input_dims: tuple[int | str | None, ...]
    opset: int
    profile: Profile
    metadata: dict[str, str]
    workspace_mb: int | None = None  # the limit the build will set (None: TensorRT's default)
    jetson: str | None = None  # the Jetson's model, on a Jetson


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


def plan_build(source: str | Path, options: TensorRTBuildOptions, host: Path = Path("/")) -> BuildPlan:
    """The build's shapes and limits, every option checked (`host`: the root of the file
    tree a Jetson is recognised by)."""
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
    check_dla_profile(profile, options.dla_core)
    jetson = jetson_model(host)
    workspace = options.workspace_mb or default_workspace_mb(jetson, memory_total_bytes(host))
    return BuildPlan(source, name, dims, opset, profile, props, workspace, jetson)


@dataclass
class _Built:
    engine: bytes
    timing_cache: bytes | None
    gpu_fallback_layers: list[str]


def _configure(builder: trt.Builder, network: trt.INetworkDefinition, plan: BuildPlan, options: TensorRTBuildOptions,
               strong: bool, pinned: Sequence[int]) -> tuple[trt.IBuilderConfig, list[str]]:
    """The builder config for this build, and (DLA) the layers that will fall back to the GPU."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if plan.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    p = plan.profile
    profile.set_shape(p.input, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    config.add_optimization_profile(profile)
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default: an fp32 engine would round matmul inputs to TF32
        (config.set_flag if options.tf32 else config.clear_flag)(trt.BuilderFlag.TF32)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if not strong and options.precision != "fp32":  # TensorRT 10's precision flags
        config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the Q/DQ nodes give the scales
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in pinned:
            layer = network.get_layer(i)
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                if layer.get_output(j).dtype in (trt.float32, trt.float16):
                    layer.set_output_type(j, trt.float32)
    fallback: list[str] = []
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        fallback = [layer.name for layer in layers if not config.can_run_on_DLA(layer)]
    return config, fallback


def _attach_timing_cache(config: trt.IBuilderConfig, data: bytes, path: Path | None, version: str) -> trt.ITimingCache:
    """The timing cache made from `data` (empty: a new one), attached strictly: TensorRT
    refuses a cache from another device instead of using it (ignore_mismatch=True would)."""
    where = f"--timing-cache {path}" if path else "the timing cache"
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:  # noqa: BLE001 - TensorRT's reason, in one line
        raise OptionError(f"{where}: TensorRT {version} cannot read it ({one_line(exc)}); give another file") from None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise OptionError(f"{where} was written by another TensorRT version or on another device, so TensorRT "
                          f"{version} refuses it (its timings would choose the wrong tactics); give another file")
    return cache


def _parse_and_build(onnx_path: Path, plan: BuildPlan, options: TensorRTBuildOptions, strong: bool,
                     keep_fp32: Sequence[str], cache_data: bytes = b"") -> _Built:
    """The serialized engine and timing cache; ExportError with TensorRT's reason on failure."""
    import tensorrt as trt

    version = trt.__version__
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if options.dla_core is not None and options.dla_core >= builder.num_DLA_cores:
        raise OptionError(f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors or 'no reason given'}")
    pinned: list[int] = []
    if not strong and keep_fp32:
        layers = [network.get_layer(i) for i in range(network.num_layers)]
        pinned = layers_of_nodes([(layer.name, getattr(layer, "metadata", "")) for layer in layers], keep_fp32,
                                 onnx_node_names(onnx_path))
    config, fallback = _configure(builder, network, plan, options, strong, pinned)
    _attach_timing_cache(config, cache_data, options.timing_cache, version)
    plan_bytes = builder.build_serialized_network(network, config)
    if plan_bytes is None:
        raise ExportError("TensorRT could not build the engine (see its messages above)")
    timing = config.get_timing_cache()
    return _Built(bytes(plan_bytes), bytes(timing.serialize()) if timing is not None else None, fallback)


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
    here = TimingCacheOrigin(version, gpu, capability)
    cache_file = options.timing_cache
    notes = check_timing_cache(cache_file, here) if cache_file is not None else []  # before any slow work
    output = Path(output) if output else plan.source.with_suffix(".engine")
    check_writable(output)
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    if plan.jetson and not options.workspace_mb and plan.workspace_mb:
        notes.append(f"{plan.jetson}: builder workspace limited to {plan.workspace_mb} MB, a quarter of the memory "
                     "the CPU and GPU share (--workspace to change it)")

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
    cache_data = cache_file.read_bytes() if cache_file and cache_file.is_file() else b""
    try:
        say(f"building the engine with TensorRT {version} ({'strongly' if strong else 'weakly'} typed)")
        built = _parse_and_build(onnx_path, plan, options, strong, keep, cache_data)
    except ExportError as exc:
        if not (options.typing == "auto" and major == 10):
            raise
        notes.append(f"strongly typed build failed ({one_line(exc)}); built with TensorRT 10's precision flags")
        strong = False
        say("retrying with TensorRT 10's builder precision flags")
        built = _parse_and_build(onnx_path, plan, options, strong, keep, cache_data)
    if built.gpu_fallback_layers:
        notes.append(f"DLA core {options.dla_core}: {len(built.gpu_fallback_layers)} layer(s) run on the GPU instead "
                     "(see gpu_fallback_layers in the manifest)")

    metadata = dict(plan.metadata)
    if metadata:
        metadata["precision"] = options.precision
    manifest = EngineManifest(
        tensorrt_version=version, gpu_name=gpu, compute_capability=capability, precision=options.precision,
        typing="strong" if strong else "weak", profiles=[plan.profile], source_onnx=str(plan.source),
        source_sha256=sha256_file(plan.source), built_from=str(onnx_path) if onnx_path != plan.source else "",
        version_compatible=options.version_compatible, workspace_mb=plan.workspace_mb, metadata=metadata,
        tf32=options.tf32, opt_level=options.opt_level, dla_core=options.dla_core,
        gpu_fallback_layers=built.gpu_fallback_layers,
    )
    manifest_file = manifest_path(output)
    with atomic_outputs(output, manifest_file) as (engine_temp, manifest_temp):
        engine_temp.write_bytes(built.engine)
        manifest_temp.write_text(manifest.to_json(), encoding="utf-8")
    if cache_file and built.timing_cache:
        with atomic_outputs(cache_file, timing_cache_origin_path(cache_file)) as (cache_temp, origin_temp):
            cache_temp.write_bytes(built.timing_cache)
            origin_temp.write_text(here.to_json(), encoding="utf-8")
    return TensorRTBuildResult(
        path=output, manifest_path=manifest_file, manifest=manifest, precision_onnx=precision_result,
        size_bytes=output.stat().st_size, seconds=time.perf_counter() - start, timing_cache=cache_file,
        notes=notes,
    )
