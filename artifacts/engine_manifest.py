"""A TensorRT engine's manifest and optimization profiles: the artifact types that the
exporter writes and the runtime checks, plain Python with no TensorRT needed.

The manifest (JSON beside the engine) says what an engine was built with and for, so a
runtime refuses an engine that cannot run on this TensorRT or GPU with one line instead
of a deserialization error. It lives below both `export` (which writes it) and `runtimes`
(which reads it), so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GlnetExportError, OptionError
from .metadata import MIN_SIDE

Shape = tuple[int, ...]
MANIFEST_FORMAT = 1


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

    def accepts(self, shape: Shape) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= d <= hi for d, lo, hi in zip(shape, self.min, self.max, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(str(data["input"]), tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


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
    # TF32 allowed for fp32 convolutions and matrix multiplies. TensorRT's own default, so a
    # manifest written before this field existed describes an engine built with it on.
    tf32: bool = True
    opt_level: int | None = None  # the builder optimization level (None: TensorRT's default, 3)
    dla_core: int | None = None  # built for this DLA core (GPU fallback on); None: the GPU only
    gpu_fallback_layers: list[str] = field(default_factory=list)  # DLA builds: layers the GPU runs

    @property
    def runs_in(self) -> str:
        """The precision the engine computes in, as verification judges it: an fp32 engine
        built with TF32 allowed rounds the inputs of its matrix products to TF32."""
        return "tf32" if self.precision == "fp32" and self.tf32 else self.precision

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


@dataclass(frozen=True)
class BuildDevice:
    """The TensorRT and GPU a file was made with (recorded beside it), or this machine's."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {self.compute_capability})"


@dataclass(frozen=True)
class DeviceMatch:
    """How a recorded BuildDevice compares with this machine's (`device_match`)."""

    tensorrt: bool  # this TensorRT can use what the recorded one wrote
    compute_capability: bool
    gpu_name: bool  # the very GPU model; False alone is only worth a note

    @property
    def usable(self) -> bool:
        return self.tensorrt and self.compute_capability


def _runs_version_compatible(built: tuple[int, ...], here: tuple[int, ...]) -> bool:
    # Later runtimes of the same major version, and TensorRT 10 engines on TensorRT 11.
    if here[:3] < built[:3]:
        return False
    return here[0] == built[0] or (built[0], here[0]) in ((8, 10), (10, 11))


def device_match(recorded: BuildDevice, here: BuildDevice, version_compatible: bool = False) -> DeviceMatch:
    """The one rule for a TensorRT and GPU recorded beside a file (an engine's manifest, a
    timing cache's record) against this machine's: the same TensorRT release (major.minor.patch;
    also a later one for a version-compatible engine) and the same compute capability, or the
    file is refused; another GPU name of the same compute capability is a note, not a refusal.

    Both an engine plan and a timing cache are GPU-specific, yet the name decides for neither:
    TensorRT refuses a plan across compute capabilities but loads it on another GPU model of the
    same capability (an H100 PCIe and an H100 SXM share 9.0 under two names), so refusing on a
    name would refuse engines that run; and a timing cache's own header names its device, which
    TensorRT checks when the build attaches the cache strictly (export.tensorrt,
    ignore_mismatch=False). So what is refused here is what TensorRT refuses too, said in one
    line before any slow work, and another GPU's name is said as a note."""
    built, now = parse_version(recorded.tensorrt_version), parse_version(here.tensorrt_version)
    same_trt = _runs_version_compatible(built, now) if version_compatible else built[:3] == now[:3]
    return DeviceMatch(same_trt, recorded.compute_capability == here.compute_capability,
                       recorded.gpu_name == here.gpu_name)


def _match(manifest: EngineManifest, trt_version: str, gpu_name: str, compute_capability: str) -> DeviceMatch:
    built_on = BuildDevice(manifest.tensorrt_version, manifest.gpu_name, manifest.compute_capability)
    return device_match(built_on, BuildDevice(trt_version, gpu_name, compute_capability), manifest.version_compatible)


def manifest_problems(manifest: EngineManifest, trt_version: str, gpu_name: str, compute_capability: str,
                      match: DeviceMatch | None = None) -> list[str]:
    """Why the engine cannot run with this TensorRT and GPU (empty when it can); `match` is
    `device_match`'s answer for them when the caller has it already."""
    problems = []
    match = match or _match(manifest, trt_version, gpu_name, compute_capability)
    if not match.tensorrt and manifest.version_compatible:
        problems.append(f"it was built (version-compatible) with TensorRT {manifest.tensorrt_version}, "
                        f"which TensorRT {trt_version} cannot run")
    elif not match.tensorrt:
        problems.append(f"it was built with TensorRT {manifest.tensorrt_version}, this is TensorRT {trt_version}")
    if not match.compute_capability:
        problems.append(f"it was built for {manifest.gpu_name} (compute capability {manifest.compute_capability}), "
                        f"this GPU is {gpu_name} ({compute_capability})")
    return problems


def check_manifest(manifest: EngineManifest, engine: Path, trt_version: str, gpu_name: str,
                   compute_capability: str) -> list[str]:
    """Raise one clear ManifestError line on a mismatch; return warnings (another GPU of the same kind)."""
    match = _match(manifest, trt_version, gpu_name, compute_capability)
    problems = manifest_problems(manifest, trt_version, gpu_name, compute_capability, match)
    if problems:
        raise ManifestError(f"{engine} cannot run here: {'; '.join(problems)}. Rebuild it on this machine with "
                            f"`glnet-export tensorrt {manifest.source_onnx}`")
    if not match.gpu_name:
        return [f"{engine} was tuned on {manifest.gpu_name}; this is {gpu_name} (same compute capability: it runs, "
                "but rebuilding here may be faster)"]
    return []
