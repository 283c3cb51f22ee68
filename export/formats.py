"""The one table of formats: every artifact glnet-export builds, and how.

Each entry says what the format is built from, which converter builds it with which
options, which runtime loads it (a `runtimes` back-end name, so export never imports
runtimes), what it computes in and what must be installed. The commands, the all-format
table (`bench --model`), the Triton writer and the measurement scripts all build through
`build`, so adding a format is one entry here (plus a converter, if it is a new one).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from artifacts.errors import OptionError

if TYPE_CHECKING:
    from glnet.model import GLNet

Progress = Callable[[str], None]
OPENVINO = "pip install 'glnet-export[openvino]'"
TENSORRT = "TensorRT and an NVIDIA GPU (JetPack on a Jetson; pip install 'glnet-export[tensorrt]' elsewhere)"


@dataclass(frozen=True)
class Format:
    name: str
    description: str
    built_from: str  # "model" (the PyTorch GLNet) or "onnx" (the portable ONNX file)
    converter: str  # a key of CONVERTERS; "" for the PyTorch reference, which is not built
    runtime: str  # the `runtimes` back-end that loads the file ("torch" for the reference)
    precision: str  # what it computes in, as a user reads it
    options: Mapping[str, Any] = field(default_factory=dict)  # the converter's options that make this format
    run_precision: str | None = None  # asked of the runtime at load; None: what the file itself asks
    requires: tuple[str, ...] = ()  # modules that must import to build and run it
    install: str = ""  # how to get them
    calibrated: bool = False  # needs calibration images
    gpu: bool = False

    def missing(self) -> str | None:
        """Why this format cannot be built here, or None. Only cheap checks: a module that
        cannot be found (TensorRT: also the stub package without the library)."""
        absent = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if not absent and "tensorrt" in self.requires:
            from artifacts.backends import tensorrt_available

            absent = [] if tensorrt_available() else ["tensorrt"]
        return f"needs {', '.join(absent)}: {self.install}" if absent else None


def _entry(name: str, description: str, **kwargs: Any) -> Format:
    kwargs["options"] = MappingProxyType(dict(kwargs.get("options", {})))
    return Format(name, description, **kwargs)


_OV_INT8 = ("openvino", "nncf")
FORMATS: dict[str, Format] = {f.name: f for f in (
    _entry("pytorch", "PyTorch eager (the reference)", built_from="model", converter="", runtime="torch",
           precision="fp32", requires=("torch",)),
    _entry("onnxruntime", "portable ONNX in onnxruntime", built_from="model", converter="onnx",
           runtime="onnxruntime", precision="fp32", requires=("onnxruntime",)),
    _entry("onnxruntime-target", "onnxruntime-targeted ONNX (`--target onnxruntime`: contrib Attention, fused "
           "LayerNorms, folded residual convolutions)", built_from="onnx", converter="onnxruntime",
           runtime="onnxruntime", precision="fp32", requires=("onnxruntime",)),
    _entry("onnxruntime-int8", "int8 Q/DQ ONNX for onnxruntime (`ort --precision int8`: Conv and MatMul in int8, "
           "GLMix's clustering in float), for CPUs without bf16", built_from="onnx", converter="onnxruntime-int8",
           runtime="onnxruntime", precision="int8 + fp32", requires=("onnxruntime",), calibrated=True),
    _entry("openvino-fp32", "OpenVINO IR fp32 built for f32 compute (`--compute f32`: residual convolutions "
           "folded), run in f32 as the file asks", built_from="onnx", converter="openvino", runtime="openvino",
           precision="fp32", options={"precision": "fp32", "compute": "f32"}, requires=("openvino",),
           install=OPENVINO),
    _entry("openvino-auto", "OpenVINO IR fp32, the device's own precision (bf16 where the CPU has it)",
           built_from="onnx", converter="openvino", runtime="openvino", precision="the device's (bf16 or fp32)",
           options={"precision": "fp32", "compute": "auto"}, requires=("openvino",), install=OPENVINO),
    _entry("openvino-fp16", "OpenVINO IR with fp16 weights, the device's own precision", built_from="onnx",
           converter="openvino", runtime="openvino", precision="the device's (bf16 or fp32), fp16 weights",
           options={"precision": "fp16", "compute": "auto"}, requires=("openvino",), install=OPENVINO),
    _entry("openvino-int8", "OpenVINO IR int8 (NNCF), the device's own precision for the rest", built_from="onnx",
           converter="openvino", runtime="openvino", precision="int8 + the device's float",
           options={"precision": "int8", "compute": "auto"}, requires=_OV_INT8, install=OPENVINO, calibrated=True),
    _entry("tensorrt-fp32", "TensorRT engine fp32", built_from="onnx", converter="tensorrt", runtime="tensorrt",
           precision="fp32", options={"precision": "fp32"}, requires=("tensorrt",), install=TENSORRT, gpu=True),
    _entry("tensorrt-fp16", "TensorRT engine fp16 (GLMix norms and softmaxes in fp32)", built_from="onnx",
           converter="tensorrt", runtime="tensorrt", precision="fp16", options={"precision": "fp16"},
           requires=("tensorrt",), install=TENSORRT, gpu=True),
    _entry("tensorrt-int8", "TensorRT engine int8 (Q/DQ)", built_from="onnx", converter="tensorrt",
           runtime="tensorrt", precision="int8", options={"precision": "int8"}, requires=("tensorrt",),
           install=TENSORRT, gpu=True, calibrated=True),
)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise OptionError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def parse_formats(text: str | None) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'), every name checked; None or '' -> every format."""
    if not text:
        return tuple(FORMATS)
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise OptionError(f"unknown format(s) {', '.join(repr(n) for n in unknown) or '(none given)'}; "
                          f"known: {', '.join(FORMATS)}")
    return names


def openvino_format(precision: str) -> Format:
    """The entry an `openvino --precision P` build starts from (fp32: the device's own compute)."""
    from .openvino import PRECISIONS

    if precision not in PRECISIONS:
        raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return get_format("openvino-auto" if precision == "fp32" else f"openvino-{precision}")


# --- default file names: one rule per converter, shared by the commands and the all-format table


def default_output(entry: Format, source: Path | str, **options: Any) -> Path:
    """Where a format is written by default: beside the source file, or `MODEL.onnx` in the
    working folder for a model (`source` is then the model's name)."""
    fmt = entry
    settings = {**fmt.options, **options}
    source = Path(source)
    if fmt.converter == "onnx":
        return source.with_suffix(".onnx")
    if fmt.converter in ("onnxruntime", "onnxruntime-int8"):
        from .onnxruntime import default_output as ort_output

        precision = "int8" if fmt.converter == "onnxruntime-int8" else "fp32"
        return ort_output(source, fmt=settings.get("fmt", "onnx"), precision=precision)
    if fmt.converter == "openvino":
        precision, compute = settings.get("precision", "fp32"), settings.get("compute", "auto")
        suffix = ("" if precision == "fp32" else f"_{precision}") + ("_f32" if compute == "f32" else "")
        return source.with_name(f"{source.stem}{suffix}.xml")
    if fmt.converter == "tensorrt":
        precision = settings.get("precision", "fp32")
        return source.with_name(f"{source.stem}{'' if precision == 'fp32' else '_' + precision}.engine")
    raise OptionError(f"{fmt.name} is not built into a file")


# --- the converters, each called the same way: (source, output, settings, calib, progress, sha256)


def _onnx(source: Any, output: Path, settings: dict[str, Any], calib: Path | None, progress: Progress | None,
          sha256: str | None) -> Any:
    from .onnx import OnnxExportOptions, export_onnx

    return export_onnx(source, output, OnnxExportOptions(**settings), checkpoint_sha256=sha256, progress=progress)


def _onnxruntime(source: Any, output: Path, settings: dict[str, Any], calib: Path | None,
                 progress: Progress | None, sha256: str | None) -> Any:
    from .onnxruntime import convert_onnxruntime

    return convert_onnxruntime(source, output, progress=progress, **settings)


def _onnxruntime_int8(source: Any, output: Path, settings: dict[str, Any], calib: Path | None,
                      progress: Progress | None, sha256: str | None) -> Any:
    budget = settings.pop("budget", None)
    if budget is not None:  # --max-drop: the same converter, held to an accuracy budget
        from .onnxruntime_int8_budget import quantize_onnxruntime_int8_within_budget

        return quantize_onnxruntime_int8_within_budget(source, output, calib, budget, progress=progress,  # type: ignore[arg-type]
                                                       **settings)
    from .onnxruntime_int8 import quantize_onnxruntime_int8

    return quantize_onnxruntime_int8(source, output, calib, progress=progress, **settings)  # type: ignore[arg-type]


def _openvino(source: Any, output: Path, settings: dict[str, Any], calib: Path | None, progress: Progress | None,
              sha256: str | None) -> Any:
    from .openvino import OpenVinoOptions, convert_openvino

    return convert_openvino(source, output, OpenVinoOptions(calib_dir=calib, **settings), progress=progress)


def _tensorrt(source: Any, output: Path, settings: dict[str, Any], calib: Path | None, progress: Progress | None,
              sha256: str | None) -> Any:
    from .tensorrt import TensorRTBuildOptions, build_engine

    return build_engine(source, output, TensorRTBuildOptions(calibration=calib, **settings), progress=progress)


Converter = Callable[[Any, Path, dict[str, Any], "Path | None", "Progress | None", "str | None"], Any]
CONVERTERS: dict[str, Converter] = {"onnx": _onnx, "onnxruntime": _onnxruntime,
                                    "onnxruntime-int8": _onnxruntime_int8, "openvino": _openvino,
                                    "tensorrt": _tensorrt}


def check_options(entry: Format | str, calib: str | Path | None = None, **options: Any) -> Format:
    """Refuse bad options for a format now, before any slow work (an export, a checkpoint read)."""
    fmt = get_format(entry) if isinstance(entry, str) else entry
    if not fmt.converter:
        raise OptionError(f"{fmt.name} is the PyTorch reference: there is no file to build")
    settings = {**fmt.options, **options}
    calib_dir = Path(calib) if calib is not None else None
    if fmt.converter == "openvino":
        from .openvino import OpenVinoOptions

        OpenVinoOptions(calib_dir=calib_dir, **settings).validate()
    elif fmt.converter == "tensorrt":
        from .tensorrt import TensorRTBuildOptions

        TensorRTBuildOptions(calibration=calib_dir, **settings).validate()
    elif fmt.converter == "onnx":
        from .onnx import OnnxExportOptions

        OnnxExportOptions(**settings).validate()
    elif fmt.converter == "onnxruntime-int8" and settings.get("budget") is not None:
        settings["budget"].validate()
    if fmt.calibrated and calib is None:  # the converters above say it in their own words first
        raise OptionError(f"{fmt.name} needs calibration images: --calib DIR")
    return fmt


def build(entry: Format | str, source: GLNet | str | Path, output: str | Path | None = None, *,
          calib: str | Path | None = None, checkpoint_sha256: str | None = None,
          progress: Progress | None = None, onnx_options: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Build a format (a table entry or its name) from `source`; return the converter's own
    typed result, whose `.path` is the file written.

    `options` override the entry's converter options (a command's flags). A format built
    from ONNX and given a PyTorch model goes through a temporary portable ONNX file first,
    exported with `onnx_options`."""
    fmt = check_options(entry, calib, **options)
    settings = {**fmt.options, **options}
    convert = CONVERTERS[fmt.converter]
    calib_dir = Path(calib) if calib is not None else None
    if isinstance(source, (str, Path)):
        source = Path(source)
        target = Path(output) if output else default_output(fmt, source)
        return convert(source, target, settings, calib_dir, progress, checkpoint_sha256)
    target = Path(output) if output else default_output(fmt, source.cfg.name)
    if fmt.built_from == "model":
        return convert(source, target, settings, calib_dir, progress, checkpoint_sha256)
    with tempfile.TemporaryDirectory(prefix="glnet-export-") as tmp:
        onnx_file = Path(tmp) / f"{source.cfg.name}.onnx"
        exported = _onnx(source, onnx_file, dict(onnx_options or {}), None, progress, checkpoint_sha256)
        result = convert(onnx_file, target, settings, calib_dir, progress, checkpoint_sha256)
    result.seconds += exported.seconds  # every converter's result says how long it took...
    result.notes = exported.notes + result.notes  # ...and what it noticed
    return result
