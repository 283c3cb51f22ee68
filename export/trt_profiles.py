"""TensorRT build decisions in plain Python, no TensorRT needed: unit-tested on any machine.

Everything a build decides before it touches TensorRT (the shapes it accepts, whether the
installed TensorRT can parse the graph) lives here. The manifest and profile types that
the runtime also reads are in `artifacts.engine_manifest`.
"""

from __future__ import annotations

from pathlib import Path

from artifacts.engine_manifest import (  # noqa: F401  (re-exported: the build side uses them by this name)
    MANIFEST_FORMAT,
    MIN_SIDE,
    EngineManifest,
    ManifestError,
    Profile,
    Shape,
    check_manifest,
    format_shape,
    manifest_path,
    manifest_problems,
    parse_version,
    sha256_file,
)
from artifacts.errors import OptionError
from artifacts.onnx_file import read_onnx

DEFAULT_MAX_BATCH = 8
ATTENTION_OPSET = 23  # opset 23 has ONNX `Attention`, which TensorRT parses from 10.14 on
ATTENTION_TRT = (10, 14)


def parse_shape(text: str) -> Shape:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise OptionError(f"shape {text!r} is not of the form NxCxHxW (e.g. 1x3x224x224)") from None
    if any(d < 1 for d in shape):
        raise OptionError(f"shape {text!r} has a size below 1")
    return shape


def onnx_input(path: Path) -> tuple[str, tuple[int | str | None, ...], int, dict[str, str]]:
    """The first input's name and dims (int, or the symbolic name), the opset, and metadata_props."""
    model = read_onnx(path, load_external_data=False)
    inp = model.graph.input[0]
    dims: list[int | str | None] = []
    for d in inp.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return inp.name, tuple(dims), opset, {p.key: p.value for p in model.metadata_props}


def default_profile(name: str, dims: tuple[int | str | None, ...], input_size: tuple[int, int]) -> Profile:
    """Fixed axes as they are; a dynamic batch 1 / 1 / 8; a dynamic H or W half / trained / double size."""
    rows: list[tuple[int, int, int]] = []  # (min, opt, max) per axis
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            rows.append((d, d, d))
        elif axis == 0:
            rows.append((1, 1, DEFAULT_MAX_BATCH))
        elif len(dims) == 4 and axis in (2, 3):
            size = input_size[axis - 2]
            rows.append((max(MIN_SIDE, size // 2), size, size * 2))
        else:
            raise OptionError(f"input {name!r} axis {axis} is dynamic with no default: give --min/--opt/--max")
    lo, mid, hi = (tuple(r[k] for r in rows) for k in range(3))
    return Profile(name, lo, mid, hi)


def resolve_profile(name: str, dims: tuple[int | str | None, ...], input_size: tuple[int, int],
                    min_shape: Shape | None = None, opt_shape: Shape | None = None,
                    max_shape: Shape | None = None) -> Profile:
    """The defaults, overridden by what was given; a missing opt is the default clamped into [min, max]."""
    base = default_profile(name, dims, input_size)
    lo = min_shape or base.min
    hi = max_shape or base.max
    if len(lo) != len(hi):
        raise OptionError(f"--min {format_shape(lo)} and --max {format_shape(hi)} differ in rank")
    if opt_shape is None and len(base.opt) == len(lo):
        opt_shape = tuple(min(max(o, a), b) for o, a, b in zip(base.opt, lo, hi, strict=True))
    profile = Profile(name, lo, opt_shape or base.opt, hi)
    profile.validate(dims)
    return profile


def check_opset(opset: int, trt_version: str) -> None:
    """Opset 23 graphs may hold ONNX `Attention`, which TensorRT parses only from 10.14 on."""
    if opset >= ATTENTION_OPSET and parse_version(trt_version)[:2] < ATTENTION_TRT:
        raise OptionError(f"the ONNX file has opset {opset}, but TensorRT {trt_version} parses ONNX Attention only "
                          "from 10.14: re-export with `glnet-export onnx --opset 20`")
