"""`glnet-export bench --model M`: every format of the format table that works here,
exported, verified against PyTorch and timed, in one table. (`benchmark --model M`, the
command's first name, is a hidden alias.)"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import (
    checked_output,
    err,
    handle_errors,
    human_bytes,
    mib,
    model_from_options,
    out,
    warn_about_the_machine,
    write_json,
)

STATUS_STYLE = {"ok": "green", "FAILED": "red", "error": "red", "skipped": "yellow"}


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def suite_table(result: Any, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    labelled = any(r.accuracy is not None for r in result.rows)  # --data: accuracy columns after top-1
    for name in ("format", "status", "precision", "file size", "max abs err", "top-1",
                 *(("data top-1 %", "vs PyTorch pp") if labelled else ()), "p50 ms", "img/s", "vs eager",
                 "load s", "first ms", "peak RSS", "export s"):
        table.add_column(name, justify="left" if name in ("format", "status", "precision") else "right", no_wrap=True)
    eager = next((r.p50_ms for r in result.rows if r.format == "pytorch"), None)
    reasons = []
    for r in result.rows:
        status = f"[{STATUS_STYLE.get(r.status, 'white')}]{r.status}[/]"
        if r.reason:
            reasons.append(f"{r.format}: {r.reason}")
            status += f" ({len(reasons)})"
        table.add_row(r.format, status, r.precision or "-", human_bytes(r.size_bytes) if r.size_bytes else "-",
                      _num(r.max_abs, ".2e"), _num(r.top1, ".0%"), *(_accuracy_cells(r) if labelled else ()),
                      _num(r.p50_ms, ".1f"), _num(r.throughput, ".1f"),
                      _num(r.p50_ms / eager if eager and r.p50_ms else None, ".2f"),
                      _num(r.figure("load_seconds"), ".2f"), _num(r.figure("first_inference_ms"), ".1f"),
                      mib(r.figure("peak_rss_mb")),
                      _num(r.export_s if r.export_s else None, ".1f"))
    table.caption = ("max abs err and top-1 against PyTorch on the sample photographs and random inputs; p50 from "
                     "all formats timed in alternation; vs eager: p50 / PyTorch's p50 (below 1: faster than eager); "
                     "load s (runtimes.load + compile), first ms (the first inference) and peak RSS (resident "
                     "memory) from a fresh process per file"
                     + (f"; data top-1 on {_labelled_images(result)} labelled images (--data), vs PyTorch: the change "
                        "of that top-1 from PyTorch's on the same images, in percentage points (95% interval: "
                        "`glnet-export accuracy`)" if labelled else "")
                     + "".join(f"\n({i}) {escape(t)}" for i, t in
                                                                   enumerate(reasons, 1)))
    return table


def _accuracy_cells(row: Any) -> tuple[str, str]:
    acc = row.accuracy
    if acc is None:
        return "-", "-"
    change = acc.change_from_pytorch
    return f"{acc.top1.value * 100:.2f}", "-" if change is None else f"{change.change * 100:+.2f}"


def _labelled_images(result: Any) -> int:
    return next(r.accuracy.images for r in result.rows if r.accuracy is not None)


@handle_errors
def bench_formats(
    model: Annotated[str, typer.Option("--model", "-m", help="Variant name (see `glnet-export models`).")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Trained weights (.pth).")] = None,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    input_size: Annotated[str, typer.Option("--input-size", help="N or HxW.")] = "224",
    batch: Annotated[int, typer.Option(help="Batch size timed.")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: the runtimes').")] = None,
    formats: Annotated[str | None, typer.Option(help="Comma-separated names from the format table "
                                                "(`glnet-export formats`; default: all).")] = None,
    calib: Annotated[Path | None, typer.Option("--calib", help="int8 calibration images (default: the sample "
                                               "photographs, too few for a real deployment).")] = None,
    iters: Annotated[int, typer.Option(help="Timing rounds (each: 1 settling + 3 timed runs per format).")] = 10,
    workdir: Annotated[Path | None, typer.Option(help="Keep the artifacts in this folder (default: removed).")]
    = None,
    gpu: Annotated[str, typer.Option(help="Device of the TensorRT engines.")] = "cuda",
    data: Annotated[Path | None, typer.Option("--data", help="Labelled images (as `accuracy --data`): top-1 of "
                                              "every format and its change from PyTorch.")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Their labels file (as `accuracy --labels`).")]
    = None,
    limit: Annotated[int | None, typer.Option(help="A class-balanced sample of N labelled images.")] = None,
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help="Load each file in a fresh process too: load time, "
                                       "first inference, peak memory.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the results as JSON ('-': stdout).")] = None,
) -> None:
    """Export MODEL to every format that works here, verify each against PyTorch, time each: one table."""
    from bench.report import BenchReport, jsonable, to_dict
    from bench.suite import SuiteOptions, run_suite
    from bench.sysinfo import collect_device_info
    from export.formats import parse_formats
    from export.onnx import parse_input_size

    options = SuiteOptions(input_size=parse_input_size(input_size), batch=batch, threads=threads,
                           formats=parse_formats(formats), calib=calib, workdir=workdir, rounds=iters, gpu=gpu,
                           edge=edge, data=data, labels=labels, limit=limit)
    options.validate()
    net, sha256 = model_from_options(model, checkpoint, use_ema=use_ema)
    device = collect_device_info(threads)
    warn_about_the_machine(device)
    with err.status(f"benchmarking {model}") as status:
        result = run_suite(net, options, checkpoint_sha256=sha256, progress=status.update)
    format_rows = [r.to_json() for r in result.rows]
    report = BenchReport("benchmark", device, jsonable(options), result.artifacts,
                         extra={"model": model, "weights": result.weights, "formats": format_rows})
    write_json(to_dict(report), json_path)
    if json_path is None or str(json_path) != "-":
        h, w = options.input_size
        out.print(suite_table(result, f"{model}, {batch}x3x{h}x{w}, on {device.summary()}"))
    if any(r.status in ("FAILED", "error") for r in result.rows):  # "skipped": not available on this machine
        raise typer.Exit(1)
