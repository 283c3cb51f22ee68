"""A portable glnet-export ONNX file -> the onnxruntime-targeted file users ship to onnxruntime.

The portable file runs anywhere (TensorRT, OpenVINO, any ONNX runtime). The targeted file
carries `export.passes`' onnxruntime rewrites (contrib Attention, fused LayerNorms, folded
residual convolutions, regrouped residual sums), so a plain `InferenceSession` in any
language runs it at the speed `glnet-export bench` reports. It needs onnxruntime, and its
metadata says so (`target`, `requires`, `contrib_ops`, `graph_passes`), so that other
back-ends refuse it with one line instead of a parser error about an unknown op.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from artifacts.atomic import check_writable
from artifacts.errors import ExportError, OptionError, one_line
from artifacts.metadata import ArtifactMetadata, MetadataError
from artifacts.onnx_blocks import tag_blocks
from artifacts.onnx_file import read_onnx, save_onnx, set_metadata

from .passes import ONNXRUNTIME_REQUIRES, PassReport, apply_onnx_target, contrib_ops

Progress = Callable[[str], None]
TARGET = "onnxruntime"


@dataclass
class OnnxRuntimeTargetResult:
    path: Path
    source: Path
    metadata: ArtifactMetadata
    passes: PassReport
    nodes_before: int
    nodes_after: int
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)


def metadata_of(proto: onnx.ModelProto, where: str | Path) -> ArtifactMetadata:
    try:
        return ArtifactMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    except MetadataError as exc:
        raise ExportError(f"{where}: {exc}; export it with `glnet-export onnx` first") from None


def check_portable_fp32(meta: ArtifactMetadata, where: str | Path) -> None:
    """One clear line unless `meta` is a portable fp32 file's: what `ort` rewrites and quantizes."""
    if meta.precision != "fp32":
        raise ExportError(f"{where} is already {meta.precision}; start from the fp32 portable ONNX")
    if meta.runtime_only is not None:
        raise ExportError(f"{where} is already {meta.runtime_only}-targeted; start from the portable ONNX")


def read_portable_metadata(source: str | Path) -> ArtifactMetadata:
    """The metadata of the portable fp32 file `source`, or one clear line why it is not one."""
    meta = metadata_of(read_onnx(source, load_external_data=False), source)
    check_portable_fp32(meta, source)
    return meta


def refuse_runtime_only(meta: ArtifactMetadata, where: str | Path, backend: str) -> None:
    """One clear line when a file rewritten for another runtime is handed to `backend`."""
    only = meta.runtime_only
    if only is not None and only != backend:
        ops = f" (contrib ops {', '.join(meta.contrib_ops)})" if meta.contrib_ops else ""
        raise ExportError(f"{where} is an {only}-only file{ops}; {backend} needs the portable ONNX "
                          f"(`glnet-export onnx` without --target)")


def target_proto(proto: onnx.ModelProto, meta: ArtifactMetadata,
                 where: str | Path = "the file") -> tuple[ArtifactMetadata, PassReport]:
    """Rewrite `proto` in place for onnxruntime and record it in its metadata; the new metadata."""
    if meta.runtime_only is not None:
        raise ExportError(f"{where} is already {meta.runtime_only}-targeted; start from the portable ONNX")
    report = apply_onnx_target(proto, TARGET)
    tag_blocks(proto)  # the nodes the passes made take their neighbours' block (artifacts.onnx_blocks)
    try:
        # The contrib domain is unknown to onnx's schemas, so no full (shape-inferring) check.
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"the onnxruntime-targeted graph fails onnx.checker: {one_line(exc)}") from exc
    meta = dataclasses.replace(meta, target=TARGET, requires=ONNXRUNTIME_REQUIRES, contrib_ops=contrib_ops(proto),
                               graph_passes=dict(report.counts))
    set_metadata(proto, meta)
    return meta, report


FILE_FORMATS = ("onnx", "ort")
# onnxruntime optimization level baked into an .ort file. Measured on glnet_4g (batch 1,
# 2 threads, this Sapphire Rapids host): the .onnx file 54.6 ms; .ort at "extended" 80.2 ms,
# because a session loading an .ort file does not run the NCHWc layout pass again (nor
# does a file saved with minimal_build_optimizations=save: 81.8 ms); .ort at "all" 53.7 ms,
# but its NCHWc blocking is this CPU's (onnxruntime warns it belongs to the machine that wrote it).
ORT_LEVELS = ("extended", "all")


def default_output(source: Path, fmt: str = "onnx", precision: str = "fp32") -> Path:
    """glnet_4g.onnx -> glnet_4g_ort.onnx (still .onnx: every tool knows the suffix), glnet_4g_ort_int8.onnx,
    or glnet_4g.ort."""
    if fmt == "ort":
        return source.with_name(f"{source.stem}.ort")
    return source.with_name(f"{source.stem}_ort{'' if precision == 'fp32' else '_' + precision}.onnx")


def save_ort_format(proto: onnx.ModelProto, output: Path, level: str = "extended") -> None:
    """onnxruntime's own flatbuffer format (what its mobile and minimal builds load), atomically.

    Saved by onnxruntime itself from a session at `level` (ORT_LEVELS): "extended" is the
    highest level whose result holds on any CPU, "all" adds this CPU's NCHWc layout.
    """
    import tempfile

    import onnxruntime as ort

    from artifacts.atomic import atomic_outputs

    with tempfile.TemporaryDirectory(prefix="glnet-ort-") as tmp, atomic_outputs(output) as (temp,):
        staged = Path(tmp) / "model.onnx"
        onnx.save_model(proto, staged)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        opts.optimized_model_filepath = str(temp)
        opts.add_session_config_entry("session.save_model_format", "ORT")
        opts.log_severity_level = 3  # its warning about "all" is ours to give, in one line (the notes)
        try:
            ort.InferenceSession(str(staged), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"onnxruntime could not save the .ort file: {one_line(exc)}") from exc


def convert_onnxruntime(source: str | Path, output: str | Path | None = None,
                        progress: Progress | None = None, fmt: str = "onnx",
                        ort_level: str = "extended") -> OnnxRuntimeTargetResult:
    """Write the onnxruntime-targeted form of the portable file `source` to `output`.

    `fmt` "onnx" writes ONNX (any onnxruntime build), "ort" onnxruntime's .ort format at
    optimization level `ort_level` (see ORT_LEVELS for what each costs)."""

    if fmt not in FILE_FORMATS:
        raise OptionError(f"--format must be one of {', '.join(FILE_FORMATS)}, not {fmt!r}")
    if ort_level not in ORT_LEVELS:
        raise OptionError(f"--ort-level must be one of {', '.join(ORT_LEVELS)}, not {ort_level!r}")
    source = Path(source)
    output = Path(output) if output is not None else default_output(source, fmt)
    if output.suffix.lower() != f".{fmt}":
        raise OptionError(f"{output}: the onnxruntime-targeted file in {fmt} format must end in .{fmt}")
    if output.resolve() == source.resolve():
        raise OptionError(f"{output}: would overwrite the portable source; choose another -o")
    check_writable(output)
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    proto = read_onnx(source)
    meta = metadata_of(proto, source)
    nodes_before = len(proto.graph.node)
    say("rewriting the graph for onnxruntime (attention, residual fold, LayerNorm, conv sums)")
    meta, report = target_proto(proto, meta, source)
    notes = []
    if fmt == "ort" and ort_level == "all":
        # The file now holds this CPU's blocked layout: say so where an app can read it.
        meta = dataclasses.replace(meta, requires=f"{meta.requires} on a CPU like the one that wrote it")
        set_metadata(proto, meta)
        notes.append("--ort-level all: the .ort file carries this CPU's NCHWc layout; run it on the same kind of CPU")
    elif fmt == "ort":
        notes.append("an .ort file at --ort-level extended runs about 1.5x slower than the .onnx in a full "
                     "onnxruntime build on x86 (no NCHWc layout at load); prefer the .onnx there")
    if report.counts.get("attention", 0) == 0:
        notes.append("no attention matched the fusion (graph layout changed?); the file is only slightly faster")
    say(f"writing {output}")
    if fmt == "onnx":
        save_onnx(proto, output)
    else:
        save_ort_format(proto, output, ort_level)
    return OnnxRuntimeTargetResult(
        path=output, source=source, metadata=meta, passes=report, nodes_before=nodes_before,
        nodes_after=len(proto.graph.node), size_bytes=output.stat().st_size, seconds=time.perf_counter() - start,
        notes=notes,
    )
