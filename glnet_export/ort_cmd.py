"""`glnet-export ort PORTABLE.onnx`: the onnxruntime-targeted file (fp32, or int8 from calibration
images), from a portable export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, err, finish_export, handle_errors, human_bytes, reference_for
from .int8_options import Data, GlmixFloat, KeepFloat, Labels, Limit, MaxDrop, budget_from_options, keep_float_names
from .onnx_cmd import target_line

if TYPE_CHECKING:
    from verification.metrics import VerificationReport

PRECISIONS = ("fp32", "int8")


@handle_errors
def ort(
    source: Annotated[Path, typer.Argument(help="A portable ONNX file written by `glnet-export onnx`.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: SOURCE_ort.onnx, "
                                                "SOURCE_ort_int8.onnx, or SOURCE.ort).")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | int8 (static Q/DQ from --calib images, onnxruntime's "
                                           "quantization tooling; for CPUs without bf16).")] = "fp32",
    calib: Annotated[Path | None, typer.Option("--calib", help="int8: a folder of calibration images.")] = None,
    calib_count: Annotated[int, typer.Option(help="int8: at most this many calibration images.")] = 300,
    glmix_float: GlmixFloat = True,
    keep_float: KeepFloat = None,
    max_drop: MaxDrop = None,
    data: Data = None,
    labels: Labels = None,
    limit: Limit = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Verify against PyTorch with "
                                                    "these weights (default: against SOURCE).")] = None,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="onnx (any onnxruntime build) | ort (onnxruntime's own "
                                     "format, for its mobile and minimal builds; fp32 only).")] = "onnx",
    ort_level: Annotated[str, typer.Option("--ort-level", help="--format ort: extended (runs on any CPU; "
                                           "about 1.5x slower than the .onnx on x86) | all (as fast as the "
                                           ".onnx, but only on the kind of CPU that wrote it).")] = "extended",
    verify: Annotated[bool, typer.Option(help="Run the written file against the source (or --checkpoint).")]
    = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads for verification.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")] = None,
) -> None:
    """Rewrite a portable ONNX file for onnxruntime: contrib Attention, fused LayerNorms, folded
    residual convolutions; or quantize it to int8 (--precision int8 --calib DIR). A plain
    InferenceSession runs it faster; other runtimes cannot."""
    from artifacts.errors import OptionError
    from export.onnxruntime import read_portable_metadata
    from verification.artifact import VerifyOptions

    if precision not in PRECISIONS:
        raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8" and calib is None:
        raise OptionError("--precision int8 needs --calib DIR: a folder of representative images")
    if precision == "int8" and fmt != "onnx":
        raise OptionError("--precision int8 writes ONNX only; drop --format ort")
    if calib is not None and precision != "int8":
        raise OptionError("--calib is for --precision int8")
    if keep_float and precision != "int8":
        raise OptionError("--keep-float is for --precision int8: the fp32 file has every block in float")
    budget = budget_from_options(max_drop, data, labels, limit, precision)
    vopts = VerifyOptions(threads=threads)
    vopts.validate()
    # The reference first: a wrong --checkpoint fails before minutes of work.
    reference = reference_for(source, read_portable_metadata(source), checkpoint, use_ema) if verify else None
    if precision == "int8":
        assert calib is not None
        blocks = keep_float_names(keep_float)
        _int8(source, output, calib, calib_count, glmix_float, blocks, reference, vopts, json_path, budget)
        return
    from export.formats import build

    with err.status("rewriting") as status:
        result = build("onnxruntime-target", source, output, progress=status.update, fmt=fmt, ort_level=ort_level)
        report = _verify(result.path, reference, vopts, status.update)
    rows = {"file": escape(f"{result.path} ({human_bytes(result.size_bytes)})"),
            "target": target_line(result.metadata, result.passes),
            "nodes": f"{result.nodes_before} -> {result.nodes_after}", "time": f"{result.seconds:.1f} s"}
    _finish(result, report, rows, f"[bold]{result.source}[/] -> {result.path}", json_path)


def _int8(source: Path, output: Path | None, calib: Path, calib_count: int, glmix_float: bool,
          keep_float: tuple[str, ...], reference: Any, vopts: Any, json_path: Path | None,
          budget: Any = None) -> None:
    from export.formats import build

    with err.status("quantizing") as status:
        result = build("onnxruntime-int8", source, output, calib=calib, calib_count=calib_count,
                       glmix_float=glmix_float, keep_float=keep_float, budget=budget, progress=status.update)
        report = _verify(result.path, reference, vopts, status.update)
    q = result.metadata.quantization
    assert q is not None
    rows = {"file": escape(f"{result.path} ({human_bytes(result.path.stat().st_size)})"),
            "int8": escape(f"{q.ops_line()} ({q.scheme})"), "float": escape(q.kept_float or "nothing kept on purpose"),
            "calibration": f"{q.calibration_images} images from {escape(str(calib))}",
            "runs on": escape(f"onnxruntime ({result.metadata.requires or 'any release'})"),
            "time": f"{result.seconds:.1f} s"}
    if q.budget is not None:
        rows["budget"] = escape(q.budget.describe())
    _finish(result, report, rows, f"[bold]{result.source}[/] -> {result.path} (int8)", json_path)


def _verify(path: Path, reference: Any, vopts: Any, progress: Any) -> VerificationReport | None:
    from verification.artifact import verify_artifact

    return None if reference is None else verify_artifact(path, reference, vopts, progress=progress)


def _finish(result: Any, report: VerificationReport | None, rows: dict[str, str], title: str,
            json_path: Path | None) -> None:
    """The summary table of `rows`, then what every converting command ends with."""
    table = Table(show_header=False, box=None, title=title, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, value)
    finish_export(result, report, table, json_path, report.reference if report is not None else "")
