"""`glnet-export debug-precision ARTIFACT`: which GLNet block loses precision (verification.precision_debug)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, err, handle_errors, openvino_precision, out, write_json

if TYPE_CHECKING:
    from verification.precision_debug import PrecisionDebugReport


@handle_errors
def debug_precision(
    artifact: Annotated[Path, typer.Argument(help="A reduced-precision file: the fp16/int8 ONNX for TensorRT "
                                             "(tensorrt --onnx-only), an onnxruntime int8 ONNX, or an OpenVINO "
                                             "IR (.xml; --precision bf16 for an fp32 IR in bf16).")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="The weights the file was exported "
                                                    "from (PyTorch fp32 is the reference).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Variant (default: from metadata).")] = None,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    images: Annotated[list[Path] | None, typer.Option("--images", help="Images or folders of images to run "
                                                      "(repeatable; default: the sample photographs).")] = None,
    precision: Annotated[str | None, typer.Option(help="OpenVINO: the compute precision to ask for: fp32 | bf16 | "
                                                  "fp16 | default (default: what the IR was built for).")] = None,
    ratio: Annotated[float, typer.Option(help="A block jumps when its error is at least this many times the "
                                         "error it was given.")] = 10.0,
    device: Annotated[str, typer.Option(help="Device of the artifact's back-end.")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", callback=checked_output, help="Write the errors per block "
                                              "as a PNG (needs the plot extra).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")] = None,
) -> None:
    """Run ARTIFACT and PyTorch fp32 side by side, block by block, and name the first GLNet block whose
    error jumps (names as in the checkpoint layout; --keep-float NAME on the converters keeps it in float)."""
    from artifacts.calibration import image_paths
    from artifacts.errors import OptionError
    from verification.precision_debug import DebugOptions, check_artifact, debug_precision
    from verification.reference import pytorch_reference

    asked = openvino_precision(precision, "--precision") if precision is not None else None
    files = [p for given in images or [] for p in (image_paths(given) if given.is_dir() else [given])]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise OptionError(f"--images: no such file: {', '.join(missing[:3])}")
    options = DebugOptions(images=files, precision=asked, ratio=ratio, device=device, threads=threads)
    options.validate()
    check_artifact(artifact, options)  # before the reference is built
    reference = pytorch_reference(artifact, model, checkpoint, use_ema)
    with err.status("comparing block by block") as status:
        report = debug_precision(artifact, reference, options, progress=status.update)
    if plot is not None:
        from verification.precision_plot import plot_block_errors

        plot_block_errors(report, plot)
    write_json(report, json_path)
    if json_path is not None and str(json_path) == "-":
        return
    out.print(block_table(report))
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    out.print(verdict(report))
    if plot is not None:
        out.print(f"plot: {escape(str(plot))}")


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "NaN" if math.isnan(value) else "inf"


def _times(growth: float) -> str:
    return f"{growth:.1f}x" if math.isfinite(growth) else "inf"


def block_table(report: PrecisionDebugReport) -> Table:
    asked = f", asked {report.requested_precision}" if report.requested_precision else ""
    table = Table(title=f"{escape(report.artifact)}: {escape(report.runner)}{asked} vs PyTorch fp32, "
                        f"{report.samples} samples ({report.photos} photographs) at "
                        f"{'x'.join(map(str, report.input_shape))}", title_justify="left")
    for name, justify in (("block", "left"), ("output", "left"), ("max rel", "right"), ("max abs", "right"),
                          ("cosine", "right"), ("growth", "right"), ("", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    stages = report.stages
    for i, b in enumerate(report.blocks):
        mark = "[bold red]<- first jump[/]" if b.block == report.first_jump else ("jumps" if b.jumps else "")
        mark += " (kept float)" if b.block in report.kept_float else ""
        stage = ".".join(b.block.split(".")[:2])
        last_of_stage = b.block.startswith("stages.") and (
            i + 1 == len(report.blocks) or not report.blocks[i + 1].block.startswith(stage + "."))
        table.add_row(b.block, "x".join(map(str, b.shape)), _fmt(b.max_rel, ".2e"), _fmt(b.max_abs, ".2e"),
                      _fmt(b.cosine, ".6f"), _times(b.growth), mark, end_section=last_of_stage)
        if last_of_stage:
            table.add_row(f"[dim]{stage} output[/]", "", f"[dim]{_fmt(stages[stage], '.2e')}[/]", "", "", "", "",
                          end_section=True)
    table.caption = report.rule
    return table


def verdict(report: PrecisionDebugReport) -> str:
    by_name = {b.block: b for b in report.blocks}
    if report.first_jump is None:
        largest = by_name.get(report.largest_growth or "")
        where = f"; the largest growth is at {largest.block} ({_times(largest.growth)})" if largest else ""
        return f"[bold green]no block's error jumps[/] in {report.precision}{where}"
    jump = by_name[report.first_jump]
    hint = f"; keep it in float with --keep-float {jump.block}" if report.precision in ("fp16", "int8") else ""
    return (f"[bold red]first jump: {jump.block}[/] ({report.precision}: error {_fmt(jump.max_rel, '.2e')}, "
            f"{_times(jump.growth)} the error it was given){hint}")
