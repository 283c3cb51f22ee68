"""An exported artifact -> a Triton Inference Server model repository entry.

Writes `REPO/NAME/config.pbtxt`, `REPO/NAME/VERSION/model.{onnx,plan,xml+bin}`, a
`labels.txt` (attached to the logits as `label_filename`, for Triton's classification
extension) and `glnet_export.json` (the artifact's metadata: the preprocessing a client
must apply). The config is built as Triton's own ModelConfig protobuf, printed with
`text_format` and parsed back, so a field name or enum value Triton would reject fails
here, not at server start. Triton itself is not run (FIELD_NOTES note 9).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.backends import BackendUnavailableError
from artifacts.errors import GlnetExportError, OptionError
from artifacts.labels import labels_for
from artifacts.metadata import ArtifactMetadata, MetadataError
from artifacts.onnx_file import read_onnx

INSTALL_HINT = "tritonclient is not installed: pip install 'glnet-export[triton]'"
# artifact suffix -> (platform or backend field, value, model file names in the version folder)
TRITON_BACKENDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    ".onnx": ("platform", "onnxruntime_onnx", ("model.onnx",)),
    ".engine": ("platform", "tensorrt_plan", ("model.plan",)),
    ".plan": ("platform", "tensorrt_plan", ("model.plan",)),
    ".xml": ("backend", "openvino", ("model.xml", "model.bin")),
}
# TensorRT engines are GPU-only; Triton's OpenVINO back-end runs on the CPU; onnxruntime
# goes where Triton finds a GPU (KIND_AUTO).
DEFAULT_KIND = {"onnxruntime_onnx": "auto", "tensorrt_plan": "gpu", "openvino": "cpu"}
KINDS = ("auto", "gpu", "cpu")
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
         "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
Dims = list[int | str | None]  # int: fixed size; str or None: dynamic


class TritonRepoError(GlnetExportError):
    """The artifact or the repository location does not allow a model repository entry."""


@dataclass
class TritonOptions:
    name: str | None = None  # model name (folder); default: the artifact's file stem
    version: int = 1
    max_batch: int | None = None  # dynamic-batch artifacts: default 8 (TensorRT: the profile's max)
    preferred_batch: tuple[int, ...] | None = None  # default: half the max batch and the max batch
    queue_delay_us: int = 100  # how long Triton may hold a request to fill a batch
    instances: int = 1
    kind: str | None = None  # auto | gpu | cpu; default per back-end (DEFAULT_KIND)
    overwrite: bool = False  # replace an existing REPO/NAME
    # A portable ONNX goes in as its onnxruntime-targeted form (export.onnxruntime): what
    # Triton's onnxruntime back-end runs is then the fast file. False keeps it portable
    # (for the back-end's TensorRT or OpenVINO execution accelerators, which take no contrib ops).
    onnxruntime_target: bool = True

    def validate(self) -> None:
        if self.version < 1:
            raise OptionError(f"--version must be >= 1, not {self.version}")
        if self.max_batch is not None and self.max_batch < 1:
            raise OptionError(f"--max-batch must be >= 1, not {self.max_batch}")
        if self.instances < 1 or self.queue_delay_us < 0:
            raise OptionError("--instances must be >= 1 and --queue-delay-us >= 0")
        if self.kind is not None and self.kind.lower() not in KINDS:
            raise OptionError(f"--kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.name):
            raise OptionError(f"model name {self.name!r}: use letters, digits, '_', '.', '-' (no leading '.')")


@dataclass
class TritonRepoResult:
    model_dir: Path
    config_path: Path
    model_files: list[Path]
    name: str
    runtime: str  # onnxruntime_onnx | tensorrt_plan | openvino
    max_batch_size: int  # 0: no batching by Triton (fixed-batch artifact)
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    config_text: str
    notes: list[str] = field(default_factory=list)


def import_model_config() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise BackendUnavailableError(INSTALL_HINT) from None
    return model_config_pb2


# -- what the artifact says about itself ----------------------------------------------

def _onnx_specs(path: Path) -> tuple[list[tuple[str, str, Dims]], list[tuple[str, str, Dims]], dict[str, str]]:
    from onnx import helper

    model = read_onnx(path, load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def spec(v: Any) -> tuple[str, str, Dims]:
        t = v.type.tensor_type
        dims: Dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        return v.name, helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output], {p.key: p.value for p in model.metadata_props}


def _openvino_specs(path: Path) -> tuple[list[tuple[str, str, Dims]], list[tuple[str, str, Dims]], dict[str, str]]:
    from artifacts.backends import import_openvino
    from artifacts.openvino_ir import read_ir_metadata

    model = import_openvino().Core().read_model(str(path))  # reads only: nothing is compiled

    def spec(port: Any) -> tuple[str, str, Dims]:
        dims: Dims = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        return port.get_any_name(), port.get_element_type().to_dtype().name, dims

    meta = read_ir_metadata(model)
    return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs], meta.to_props() if meta else {}


def _tensorrt_specs(path: Path) -> tuple[list[tuple[str, str, Dims]], list[tuple[str, str, Dims]], dict[str, str]]:
    # No TensorRT needed: the manifest `glnet-export tensorrt` writes beside the engine has
    # the profile (which axes vary) and the metadata; output shapes come from the metadata
    # or, for feature artifacts, from the source ONNX the manifest names.
    from artifacts.engine_manifest import EngineManifest, manifest_path

    mpath = manifest_path(path)
    if not mpath.is_file():
        raise TritonRepoError(f"{path}: no manifest {mpath.name} beside it, so its inputs and outputs are unknown "
                              "(build engines with `glnet-export tensorrt`)")
    manifest = EngineManifest.from_json(mpath.read_text(encoding="utf-8"), str(mpath))
    p = manifest.profiles[0]
    inputs: list[tuple[str, str, Dims]] = [
        (p.input, "float32", [lo if lo == hi else None for lo, hi in zip(p.min, p.max, strict=True)])]
    meta = ArtifactMetadata.from_props(manifest.metadata)
    batch: Dims = [None if p.min[0] != p.max[0] else p.min[0]]
    if meta.task == "classify":
        return inputs, [(meta.outputs[0], "float32", batch + [meta.num_classes])], manifest.metadata
    source = Path(manifest.source_onnx)
    if not source.is_file():
        raise TritonRepoError(f"{path}: a feature engine's output shapes come from its source ONNX "
                              f"{manifest.source_onnx}, which is not there")
    return inputs, _onnx_specs(source)[1], manifest.metadata


def _triton_dims(dims: Dims, batched: bool) -> list[int]:
    # With batching Triton adds the batch axis itself; -1 marks a dynamic axis (H, W).
    return [d if isinstance(d, int) and d > 0 else -1 for d in (dims[1:] if batched else dims)]


# -- the repository entry -------------------------------------------------------------

def write_triton_repo(artifact: str | Path, repo: str | Path, options: TritonOptions | None = None
                      ) -> TritonRepoResult:
    """Write `repo/NAME/` for `artifact`; the whole folder appears at once, or not at all."""
    options = options or TritonOptions()
    options.validate()
    artifact, repo = Path(artifact), Path(repo)
    backend = TRITON_BACKENDS.get(artifact.suffix.lower())
    if backend is None:
        raise TritonRepoError(f"{artifact}: unsupported artifact type {artifact.suffix!r} for Triton "
                              f"(known: {', '.join(sorted(TRITON_BACKENDS))})")
    if not artifact.is_file():
        raise TritonRepoError(f"{artifact}: no such file")
    name = options.name or re.sub(r"[^A-Za-z0-9_.-]", "_", artifact.stem).lstrip(".") or "glnet"
    target = repo / name
    if repo.exists() and not repo.is_dir():
        raise TritonRepoError(f"{repo}: exists and is not a folder (a Triton model repository is a folder)")
    if target.exists() and not options.overwrite:
        raise TritonRepoError(f"{target} already exists: choose another --name, or --overwrite to replace it")
    field_name, runtime, files = backend
    mc = import_model_config()  # before any work: a missing tritonclient fails fast

    readers = {"onnxruntime_onnx": _onnx_specs, "tensorrt_plan": _tensorrt_specs, "openvino": _openvino_specs}
    inputs, outputs, props = readers[runtime](artifact)
    try:
        meta = ArtifactMetadata.from_props(props)
    except MetadataError as exc:
        raise TritonRepoError(f"{artifact}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="glnet-triton-") as tmp:
        notes: list[str] = []
        if runtime == "onnxruntime_onnx" and options.onnxruntime_target and meta.runtime_only is None:
            from export.formats import build

            converted = build("onnxruntime-target", artifact, Path(tmp) / "model.onnx")
            notes.append(f"model.onnx is the onnxruntime-targeted form of {artifact.name} "
                         f"({converted.passes.describe()}); --portable keeps the file as it is")
            artifact, meta = Path(converted.path), converted.metadata
        return _write_entry(artifact, target, name, runtime, field_name, files, inputs, outputs, meta, mc, options,
                            notes)


def _write_entry(artifact: Path, target: Path, name: str, runtime: str, field_name: str, files: tuple[str, ...],
                 inputs: list[tuple[str, str, Dims]], outputs: list[tuple[str, str, Dims]], meta: ArtifactMetadata,
                 mc: Any, options: TritonOptions, notes: list[str]) -> TritonRepoResult:

    batch_dim = inputs[0][2][0] if inputs[0][2] else 1
    batched = not isinstance(batch_dim, int) or batch_dim <= 0
    max_batch = 0
    if batched:
        limit = max(_tensorrt_profile_max(artifact), 1) if runtime == "tensorrt_plan" else None
        if limit and options.max_batch and options.max_batch > limit:
            raise OptionError(f"--max-batch {options.max_batch} is above the engine profile's max batch {limit}")
        max_batch = options.max_batch or limit or 8
    elif options.max_batch:
        notes.append(f"{artifact.name} has a fixed batch of {batch_dim}: Triton cannot batch it (max_batch_size 0)")

    config = mc.ModelConfig(name=name, max_batch_size=max_batch)
    setattr(config, field_name, runtime)
    for tname, dtype, dims in inputs:
        config.input.add(name=tname, data_type=mc.DataType.Value(_type(dtype)), dims=_triton_dims(dims, batched))
    labels = labels_for(meta.labels, meta.num_classes) if meta.task == "classify" else None
    for tname, dtype, dims in outputs:
        out = config.output.add(name=tname, data_type=mc.DataType.Value(_type(dtype)),
                                dims=_triton_dims(dims, batched))
        if labels and tname == "logits":
            out.label_filename = "labels.txt"
    if max_batch:
        preferred = options.preferred_batch or sorted({max(1, max_batch // 2), max_batch})
        if any(not 1 <= b <= max_batch for b in preferred):
            raise OptionError(f"preferred batch sizes {list(preferred)} must lie in 1..{max_batch}")
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    kind = (options.kind or DEFAULT_KIND[runtime]).lower()
    if runtime == "tensorrt_plan" and kind == "cpu":
        raise OptionError("a TensorRT engine runs on a GPU only: --kind gpu (or auto)")
    config.instance_group.add(count=options.instances, kind=mc.ModelInstanceGroup.Kind.Value(f"KIND_{kind.upper()}"))
    if runtime == "openvino":
        notes.append("Triton's OpenVINO back-end leaves the compute precision to the CPU plugin, which runs bf16 on "
                     "CPUs with AVX512_BF16 (about 1% output error; `glnet-export verify --precision default` "
                     "measures it)")
    if runtime == "tensorrt_plan":
        notes.append("the engine runs only on Triton builds with the TensorRT version and GPU it was built for "
                     "(see its manifest)")

    text = _print_and_check(config, mc)
    sources = [artifact] if runtime != "openvino" else [artifact, artifact.with_suffix(".bin")]
    sources += _external_data(artifact) if runtime == "onnxruntime_onnx" else []
    extra = {"labels.txt": "\n".join(labels) + "\n"} if labels else {}
    extra["glnet_export.json"] = json.dumps(meta.to_props(), indent=2) + "\n"
    _write_atomically(target, options, text, sources, files, extra)
    version_dir = target / str(options.version)
    return TritonRepoResult(
        model_dir=target, config_path=target / "config.pbtxt",
        model_files=[version_dir / f for f in files] + [version_dir / s.name for s in sources[len(files):]],
        name=name, runtime=runtime, max_batch_size=max_batch,
        inputs={i.name: list(i.dims) for i in config.input}, outputs={o.name: list(o.dims) for o in config.output},
        config_text=text, notes=notes)


def _type(dtype: str) -> str:
    if dtype not in TYPES:
        raise TritonRepoError(f"tensor type {dtype} has no Triton equivalent here (known: {', '.join(TYPES)})")
    return TYPES[dtype]


def _tensorrt_profile_max(engine: Path) -> int:
    from artifacts.engine_manifest import EngineManifest, manifest_path

    manifest = EngineManifest.from_json(manifest_path(engine).read_text(encoding="utf-8"))
    return manifest.profiles[0].max[0]


def _print_and_check(config: Any, mc: Any) -> str:
    from google.protobuf import text_format

    text = text_format.MessageToString(config, use_short_repeated_primitives=True)  # dims: [3, -1, -1]
    parsed = text_format.Parse(text, mc.ModelConfig())  # what Triton will read must be what we built
    if parsed != config:  # pragma: no cover - would be a protobuf bug
        raise TritonRepoError("config.pbtxt does not parse back into the same ModelConfig")
    return text


def _external_data(onnx_path: Path) -> list[Path]:
    """Side files of an ONNX model with external weights (kept beside model.onnx by name)."""
    import onnx

    model = read_onnx(onnx_path, load_external_data=False)
    names = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return [onnx_path.parent / n for n in sorted(names)]


def _write_atomically(target: Path, options: TritonOptions, config_text: str, sources: list[Path],
                      files: tuple[str, ...], extra: dict[str, str]) -> None:
    """Build the model folder beside `target` (same file system), then rename it into place.

    A Triton polling the repository never sees a half-copied model; an existing folder is
    replaced (--overwrite) only once the new one is complete.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise TritonRepoError(f"{target.parent}: cannot write the repository there ({exc.strerror or exc})") from None
    old: Path | None = None
    try:
        version_dir = staging / str(options.version)
        version_dir.mkdir()
        for i, source in enumerate(sources):
            if not source.is_file():
                raise TritonRepoError(f"{source}: missing (the artifact needs it)")
            shutil.copyfile(source, version_dir / (files[i] if i < len(files) else source.name))
        (staging / "config.pbtxt").write_text(config_text, encoding="utf-8")
        for fname, content in extra.items():
            (staging / fname).write_text(content, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; Triton may run as another user
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        try:
            os.replace(staging, target)
        except OSError:
            if old is not None:  # put the previous model back
                os.replace(old / target.name, target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
