"""TensorRT's optimization profiles and engine manifests: plain Python, no TensorRT needed.

Everything a build decides before it touches TensorRT (the shapes it accepts, whether the
installed TensorRT can parse the graph, what goes in the manifest) and everything a
runtime checks before it deserializes (whether the engine fits this TensorRT and GPU)
lives here, so it is unit-tested on any machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glnet_export.errors import GlnetExportError, OptionError
from glnet_export.onnx_file import read_onnx

Shape = tuple[int, ...]
MIN_SIDE = 32  # GLNet down-samples 32x
DEFAULT_MAX_BATCH = 8
MANIFEST_FORMAT = 1
ATTENTION_OPSET = 23  # opset 23 has ONNX `Attention`, which TensorRT parses from 10.14 on
ATTENTION_TRT = (10, 14)


class ManifestError(GlnetExportError):
    """An engine's manifest is unreadable, or says the engine cannot run here."""


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.30' -> (10, 3, 0, 30); a non-numeric tail ends it ('11.0.0b1' -> (11, 0, 0))."""
    parts: list[int] = []
    for piece in text.strip().split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() < len(piece):
            break
    return tuple(parts)


def parse_shape(text: str) -> Shape:
    """'1x3x224x224' -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(p) for p in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise OptionError(f"shape {text!r} is not of the form NxCxHxW (e.g. 1x3x224x224)") from None
    if any(d < 1 for d in shape):
        raise OptionError(f"shape {text!r} has a size below 1")
    return shape


def format_shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


@dataclass(frozen=True)
class Profile:
    """The shapes one optimization profile accepts for one input: min <= opt <= max per axis."""

    input: str
    min: Shape
    opt: Shape
    max: Shape

    def validate(self, dims: tuple[int | str | None, ...]) -> None:
        for label, shape in (("--min", self.min), ("--opt", self.opt), ("--max", self.max)):
            if len(shape) != len(dims):
                raise OptionError(f"{label} {format_shape(shape)} has {len(shape)} axes; input {self.input!r} has "
                                  f"{len(dims)}")
            for axis, (want, got) in enumerate(zip(dims, shape, strict=True)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise OptionError(f"{label} {format_shape(shape)}: axis {axis} of {self.input!r} "
                                      f"is fixed at {want}")
            if len(shape) == 4 and min(shape[2:]) < MIN_SIDE:
                raise OptionError(f"{label} {format_shape(shape)}: height and width must be >= {MIN_SIDE}")
        for axis in range(len(dims)):
            lo, mid, hi = self.min[axis], self.opt[axis], self.max[axis]
            if not lo <= mid <= hi:
                raise OptionError(f"axis {axis}: need min <= opt <= max, got {lo}, {mid}, {hi} "
                                  f"({format_shape(self.min)} / {format_shape(self.opt)} / {format_shape(self.max)})")

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(str(data["input"]), tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(engine: Path) -> Path:
    """model.engine -> model.engine.json."""
    return engine.with_name(engine.name + ".json")


@dataclass
class EngineManifest:
    """What an engine was built with and for, written beside it as JSON."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # fp32 | fp16 | int8
    typing: str  # strong | weak (builder flags, TensorRT 10 only)
    profiles: list[Profile]
    source_onnx: str
    source_sha256: str  # of the ONNX file as given
    built_from: str = ""  # the precision ONNX TensorRT parsed, when not the source
    version_compatible: bool = False
    workspace_mb: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # the ONNX metadata_props, precision updated
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["profiles"] = [p.to_dict() for p in self.profiles]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> EngineManifest:
        try:
            data = json.loads(text)
            data["profiles"] = [Profile.from_dict(p) for p in data.get("profiles", [])]
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"{where}: not a glnet-export engine manifest "
                                f"({exc.__class__.__name__}: {exc})") from None


def _runs_version_compatible(built: tuple[int, ...], here: tuple[int, ...]) -> bool:
    # Later runtimes of the same major version, and TensorRT 10 engines on TensorRT 11.
    if here[:3] < built[:3]:
        return False
    return here[0] == built[0] or (built[0], here[0]) in ((8, 10), (10, 11))


def manifest_problems(manifest: EngineManifest, trt_version: str, gpu_name: str, compute_capability: str) -> list[str]:
    """Why the engine cannot run with this TensorRT and GPU (empty when it can)."""
    problems = []
    built, here = parse_version(manifest.tensorrt_version), parse_version(trt_version)
    if manifest.version_compatible:
        if not _runs_version_compatible(built, here):
            problems.append(f"it was built (version-compatible) with TensorRT {manifest.tensorrt_version}, "
                            f"which TensorRT {trt_version} cannot run")
    elif built[:3] != here[:3]:
        problems.append(f"it was built with TensorRT {manifest.tensorrt_version}, this is TensorRT {trt_version}")
    if manifest.compute_capability != compute_capability:
        problems.append(f"it was built for {manifest.gpu_name} (compute capability {manifest.compute_capability}), "
                        f"this GPU is {gpu_name} ({compute_capability})")
    return problems


def check_manifest(manifest: EngineManifest, engine: Path, trt_version: str, gpu_name: str,
                   compute_capability: str) -> list[str]:
    """Raise one clear ManifestError line on a mismatch; return warnings (another GPU of the same kind)."""
    problems = manifest_problems(manifest, trt_version, gpu_name, compute_capability)
    if problems:
        raise ManifestError(f"{engine} cannot run here: {'; '.join(problems)}. Rebuild it on this machine with "
                            f"`glnet-export tensorrt {manifest.source_onnx}`")
    if manifest.gpu_name != gpu_name:
        return [f"{engine} was tuned on {manifest.gpu_name}; this is {gpu_name} (same compute capability: it runs, "
                "but rebuilding here may be faster)"]
    return []
