"""TensorRT build decisions in plain Python, no TensorRT needed: unit-tested on any machine.

Everything a build decides before it touches TensorRT (the shapes it accepts, whether the
installed TensorRT can parse the graph) lives here. The manifest and profile types that
the runtime also reads are in `artifacts.engine_manifest`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from artifacts.engine_manifest import (  # noqa: F401  (re-exported: the build side uses them by this name)
    MANIFEST_FORMAT,
    MIN_SIDE,
    BuildDevice,
    EngineManifest,
    ManifestError,
    Profile,
    Shape,
    check_manifest,
    device_match,
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


# --- the builder workspace: TensorRT's default is the whole device memory, which on a
# Jetson is the memory the CPU, the OS and this process share.

JETSON_WORKSPACE_FRACTION = 4  # a quarter of a Jetson's memory


def default_workspace_mb(jetson_model: str | None, memory_bytes: int | None) -> int | None:
    """The workspace limit to use when none is given: on a Jetson a quarter of the shared
    memory (the parser, the ONNX file, PyTorch and the OS live in the rest); elsewhere None,
    TensorRT's own default (the GPU's memory, which is the GPU's alone)."""
    if jetson_model is None or not memory_bytes:
        return None
    return max(256, memory_bytes // JETSON_WORKSPACE_FRACTION >> 20)


# --- DLA

def check_dla_profile(profile: Profile, dla_core: int | None) -> None:
    """DLA runs static shapes only: one line, before any slow work, if the profile is dynamic."""
    if dla_core is not None and not profile.min == profile.opt == profile.max:
        raise OptionError(f"--dla-core needs a static shape, but the profile is {format_shape(profile.min)} .. "
                          f"{format_shape(profile.max)}: give --min, --opt and --max the same shape "
                          f"(e.g. {format_shape(profile.opt)})")


# --- layers of the parsed network and the ONNX nodes they come from

_METADATA = re.compile(r"^\[ONNX Layer: (.*?)(?: \| .*)?\]$", re.DOTALL)
_UNIQUE_SUFFIX = re.compile(r"^(.*)_\d+$", re.DOTALL)


def layer_node(layer_name: str, metadata: str, node_names: Collection[str]) -> str | None:
    """The ONNX node a network layer was made for, or None (a layer the parser added itself).

    onnx-tensorrt (ImporterContext::registerLayer) writes `[ONNX Layer: <node> | ...]` into
    each layer's metadata (TensorRT 8.6 on) and names the layer after the node, made unique
    with `_<counter>` (weightUtils.cpp generateUniqueName) when a node needs several layers.
    So `node_MatMul_1_57` may be a second layer of node_MatMul_1, while node_MatMul_10 is
    another node: match whole names, never prefixes."""
    found = _METADATA.match(metadata or "")
    if found and found.group(1) in node_names:
        return found.group(1)
    if layer_name in node_names:
        return layer_name
    suffixed = _UNIQUE_SUFFIX.match(layer_name)
    if suffixed and suffixed.group(1) in node_names:
        return suffixed.group(1)
    return None


def layers_of_nodes(layers: Iterable[tuple[str, str]], nodes: Collection[str],
                    node_names: Collection[str]) -> list[int]:
    """Indexes of the layers (name, metadata) made for one of `nodes`, of a graph whose node
    names are `node_names`."""
    wanted = set(nodes)
    return [i for i, (name, metadata) in enumerate(layers) if layer_node(name, metadata, node_names) in wanted]


# --- the timing cache and who wrote it: TensorRT times tactics on one GPU with one version

@dataclass(frozen=True)
class TimingCacheOrigin(BuildDevice):
    """Written beside a timing cache (CACHE.json): the TensorRT and GPU that timed it."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def timing_cache_origin_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def check_timing_cache(cache: Path, here: BuildDevice) -> list[str]:
    """Refuse, in one line, a timing cache written by another TensorRT version or for another
    compute capability (its times would pick this device's tactics); return a note for another
    GPU of the same capability (`device_match` says why that is no refusal here). A cache with
    no record of its origin is checked by TensorRT itself (set_timing_cache with
    ignore_mismatch=False)."""
    record = timing_cache_origin_path(cache)
    if not cache.is_file() or not record.is_file():
        return []
    try:
        origin = TimingCacheOrigin(**json.loads(record.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise OptionError(f"{record}: not a timing cache record ({exc}); delete it and {cache.name}") from None
    match = device_match(origin, here)
    if not match.usable:
        raise OptionError(f"--timing-cache {cache} was written by {origin.describe()}; this is {here.describe()}: "
                          "its timings would choose the wrong tactics here. Give another --timing-cache file")
    if not match.gpu_name:
        return [f"--timing-cache {cache} was timed on {origin.gpu_name}, this is {here.gpu_name} (same compute "
                "capability); TensorRT checks the cache's device itself"]
    return []


def onnx_node_names(path: Path) -> set[str]:
    """The names the ONNX parser gives the nodes of `path` (an unnamed one: node_of_<first output>)."""
    graph = read_onnx(path, load_external_data=False).graph
    return {n.name or f"node_of_{n.output[0]}" for n in graph.node if n.name or n.output}
