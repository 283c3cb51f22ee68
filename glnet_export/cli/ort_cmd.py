"""`glnet-export ort PORTABLE.onnx`: the onnxruntime-targeted file, from a portable export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, err, fail, handle_errors, human_bytes, out, write_json
from .onnx_cmd import target_line
from .render import verification_table


@handle_errors
def ort(
    source: Annotated[Path, typer.Argument(help="A portable ONNX file written by `glnet-export onnx`.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: SOURCE_ort.onnx, "
                                                "or SOURCE.ort).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="onnx (any onnxruntime build) | ort (onnxruntime's own "
                                     "format, for its mobile and minimal builds).")] = "onnx",
    ort_level: Annotated[str, typer.Option("--ort-level", help="--format ort: extended (runs on any CPU; "
                                           "about 1.5x slower than the .onnx on x86) | all (as fast as the "
                                           ".onnx, but only on the kind of CPU that wrote it).")] = "extended",
    verify: Annotated[bool, typer.Option(help="Run the written file against the source in onnxruntime.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads for verification.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")] = None,
) -> None:
    """Rewrite a portable ONNX file for onnxruntime: contrib Attention, fused LayerNorms, folded
    residual convolutions. A plain InferenceSession runs it faster; other runtimes cannot."""
    from export.onnxruntime import convert_onnxruntime
    from export.verify import VerifyOptions, verify_artifact

    vopts = VerifyOptions(threads=threads)
    vopts.validate()
    with err.status("rewriting") as status:
        result = convert_onnxruntime(source, output, progress=status.update, fmt=fmt, ort_level=ort_level)
        report = verify_artifact(result.path, result.source, vopts, progress=status.update) if verify else None

    write_json({"export": result, "verification": report}, json_path)
    if json_path is not None and str(json_path) == "-":
        if report is not None and not report.passed:
            raise fail(f"verification FAILED: {result.path} was written but does not match {result.source}")
        raise typer.Exit(0)
    table = Table(show_header=False, box=None, title=f"[bold]{result.source}[/] -> {result.path}",
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("file", escape(f"{result.path} ({human_bytes(result.size_bytes)})"))
    table.add_row("target", target_line(result.metadata, result.passes))
    table.add_row("nodes", f"{result.nodes_before} -> {result.nodes_after}")
    table.add_row("time", f"{result.seconds:.1f} s")
    out.print(table)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    if report is None:
        out.print("[yellow]not verified[/] (--no-verify)")
        return
    out.print(verification_table(report))
    if not report.passed:
        raise fail(f"verification FAILED: {result.path} was written but does not match {result.source}")
    out.print(f"[bold green]PASSED[/] {escape(str(result.path))} matches {escape(str(result.source))} "
              f"at {len(report.results)} shape(s)")
