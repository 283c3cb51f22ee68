"""`glnet-export tensorrt`: precision-ready ONNX, then a TensorRT engine with its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import checked_output, err, fail, handle_errors, human_bytes, out, write_json
from .int8_options import KeepFloat, keep_float_names
from .render import verification_table


@handle_errors
def tensorrt(
    source: Annotated[Path, typer.Argument(help="The ONNX file (from `glnet-export onnx`).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Engine file (default: SOURCE.engine, "
                                                "SOURCE_fp16.engine, SOURCE_int8.engine); with --onnx-only the ONNX "
                                                "file (default: SOURCE.PRECISION.onnx).")]
    = None,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 (fp16 casts, GLMix norms/softmax in fp32) | "
                                           "int8 (Q/DQ from --calib).")] = "fp32",
    calib: Annotated[Path | None, typer.Option("--calib", help="int8: a folder of calibration images.")] = None,
    calib_samples: Annotated[int, typer.Option(help="int8: at most this many calibration images.")] = 64,
    calib_method: Annotated[str, typer.Option(help="int8: minmax | entropy | percentile.")] = "minmax",
    keep_float: KeepFloat = None,
    min_shape: Annotated[str | None, typer.Option("--min", help="Smallest input, e.g. 1x3x224x224.")] = None,
    opt_shape: Annotated[str | None, typer.Option("--opt", help="Input shape to tune for.")] = None,
    max_shape: Annotated[str | None, typer.Option("--max", help="Largest input.")] = None,
    workspace: Annotated[int | None, typer.Option(help="Builder workspace limit in MB (default: TensorRT's, the "
                                                  "GPU's memory; on a Jetson a quarter of the shared memory).")]
    = None,
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file, read and updated; refused when "
                                                      "another TensorRT version or compute capability wrote it.")]
    = None,
    version_compatible: Annotated[bool, typer.Option(help="Build an engine later TensorRT versions can run.")] = False,
    typing_mode: Annotated[str, typer.Option("--typing", help="auto | strong | weak (TensorRT 10 builder flags).")]
    = "auto",
    tf32: Annotated[bool, typer.Option(help="Allow TF32 in fp32 convolutions and matrix products (Ampere and "
                                       "newer, Orin too): faster, inputs rounded to a 10-bit mantissa.")] = False,
    opt_level: Annotated[int | None, typer.Option(help="Builder optimization level 0..5 (TensorRT's default 3; "
                                                  "higher: longer builds, maybe faster engines).")] = None,
    dla_core: Annotated[int | None, typer.Option(help="Build for this DLA core (Jetson AGX/NX Orin), layers DLA "
                                                 "cannot run falling back to the GPU; needs a static shape "
                                                 "(--min = --opt = --max) and fp16 or int8.")] = None,
    onnx_only: Annotated[bool, typer.Option("--onnx-only", help="Write and verify only the fp16/int8 ONNX "
                                            "(no TensorRT or GPU needed).")] = False,
    verify: Annotated[bool, typer.Option(help="Check the result against the source ONNX in onnxruntime.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")]
    = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for onnxruntime.")] = None,
) -> None:
    """Build a TensorRT engine (TensorRT 10 or 11) from an ONNX file, with the precision in the ONNX."""
    from artifacts.backends import require_tensorrt
    from export.formats import build, get_format
    from export.tensorrt import NO_TRT_HINT, TensorRTBuildOptions, plan_build
    from export.trt_profiles import parse_shape

    options = TensorRTBuildOptions(
        precision=precision, calibration=calib, calib_samples=calib_samples, calib_method=calib_method,
        min_shape=parse_shape(min_shape) if min_shape else None,
        opt_shape=parse_shape(opt_shape) if opt_shape else None,
        max_shape=parse_shape(max_shape) if max_shape else None, workspace_mb=workspace, timing_cache=timing_cache,
        version_compatible=version_compatible, typing=typing_mode, keep_float=keep_float_names(keep_float),
        tf32=tf32, opt_level=opt_level, dla_core=dla_core,
    )
    plan = plan_build(source, options)  # checks the options and the shapes before any slow work
    report: dict[str, Any] = {"precision_onnx": None, "engine": None, "verification": None}
    to_stdout = json_path is not None and str(json_path) == "-"  # then stdout is the JSON alone
    if onnx_only:
        if precision == "fp32":
            raise fail("--onnx-only writes an fp16 or int8 ONNX; an fp32 engine is built from the source as it is")
        from export.precision import write_precision_onnx

        with err.status(f"writing the {precision} ONNX"):
            result = write_precision_onnx(source, output, options.precision_options())
        blocks = f", blocks {', '.join(options.keep_float)}" if options.keep_float else ""
        report["precision_onnx"] = result
        if not to_stdout:
            out.print(f"[bold]{precision}[/] ONNX -> {result.path} ({human_bytes(result.path.stat().st_size)}): "
                      f"{len(result.kept_fp32)} nodes kept fp32 (GLMix's sensitive ones{blocks}), "
                      f"{result.casts} casts, {result.quantized} quantized tensors, {result.seconds:.1f} s")
        candidate = result.path
    else:
        require_tensorrt(NO_TRT_HINT)
        with err.status("building the TensorRT engine") as status:
            settings = {k: v for k, v in vars(options).items() if k != "calibration"}
            built = build(get_format(f"tensorrt-{precision}"), source, output, calib=calib, progress=status.update,
                          **settings)
        report["engine"], report["precision_onnx"] = built, built.precision_onnx
        if not to_stdout:
            out.print(_summary(built))
        candidate = built.path
        for note in built.notes:
            err.print(f"[yellow]note:[/] {note}")
    verification = _verify(source, candidate, plan.profile, threads) if verify else None
    report["verification"] = verification
    write_json(report, json_path)
    if verification is not None:
        if not to_stdout:
            out.print(verification_table(verification))
        if not verification.passed:
            raise fail(f"verification FAILED: {candidate} does not match {source} within the "
                       f"{verification.precision} tolerance")  # what ran: tf32 for an fp32 engine with --tf32
        if not to_stdout:
            out.print(f"[bold green]PASSED[/] {candidate} matches {source} at {len(verification.results)} shape(s)")


def _verify(source: Path, candidate: Path, profile: Any, threads: int | None) -> Any:
    """The candidate (precision ONNX or engine) against the fp32 source ONNX, both real runs."""
    from artifacts.metadata import ArtifactMetadata, MetadataError
    from export.trt_profiles import onnx_input
    from verification.artifact import VerifyOptions, verify_artifact
    from verification.metrics import shapes_to_verify_engine

    try:
        meta = ArtifactMetadata.from_props(onnx_input(source)[3])
    except MetadataError:
        # --verify was asked for (it is the default): a silent "not verified" and exit 0 would read as a pass.
        raise fail(f"cannot verify: {source} carries no glnet-export metadata (input size, preprocessing); "
                   "export it with `glnet-export onnx`, or pass --no-verify") from None
    with err.status("verifying against the source ONNX") as status:  # at shapes the engine's profile accepts
        options = VerifyOptions(threads=threads, shapes=shapes_to_verify_engine(meta, profile))
        return verify_artifact(candidate, source, options, progress=status.update)


def _summary(result: Any) -> Table:
    m = result.manifest
    table = Table(show_header=False, box=None, title=f"[bold]TensorRT {m.tensorrt_version}[/] -> {result.path}",
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("engine", f"{result.path} ({human_bytes(result.size_bytes)}), manifest {result.manifest_path}")
    table.add_row("gpu", f"{m.gpu_name} (compute capability {m.compute_capability})")
    source = f", from {m.built_from}" if m.built_from else ""
    table.add_row("precision", f"{m.precision}, {m.typing}ly typed{source}")
    for p in m.profiles:
        fmt = "x".join
        table.add_row("profile", f"{p.input}: min {fmt(map(str, p.min))}, opt {fmt(map(str, p.opt))}, "
                                 f"max {fmt(map(str, p.max))}")
    table.add_row("options", f"workspace {m.workspace_mb or 'default'} MB, version-compatible "
                             f"{'yes' if m.version_compatible else 'no'}, timing cache {result.timing_cache or '-'}, "
                             f"TF32 {'allowed' if m.tf32 else 'off'}, optimization level "
                             f"{'default' if m.opt_level is None else m.opt_level}")
    if m.dla_core is not None:
        fallback = ", ".join(m.gpu_fallback_layers[:8]) + (", ..." if len(m.gpu_fallback_layers) > 8 else "")
        table.add_row("DLA", f"core {m.dla_core}; {len(m.gpu_fallback_layers)} layer(s) on the GPU"
                             + (f": {fallback}" if fallback else ""))
    table.add_row("time", f"{result.seconds:.1f} s")
    return table
