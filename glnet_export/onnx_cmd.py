"""`glnet-export onnx`: export, check, simplify, write atomically, then prove it right."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, err, fail, finish_export, handle_errors, human_bytes, model_from_options


@handle_errors
def onnx(
    model: Annotated[str, typer.Option("--model", "-m", help="Variant name (see `glnet-export models`).")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Trained weights (.pth).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: MODEL.onnx).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17-23).")] = 20,
    input_size: Annotated[str, typer.Option("--input-size", help="N or HxW; the export shape.")] = "224",
    batch: Annotated[int, typer.Option(help="Batch size: fixed with --dynamic none, else the first one verified.")] = 1,
    dynamic: Annotated[str, typer.Option(help="none | batch | shape (batch, height and width).")] = "batch",
    target: Annotated[str, typer.Option(help="portable (standard ONNX: TensorRT, OpenVINO, any runtime) | "
                                        "onnxruntime (rewritten for onnxruntime's kernels: faster there, "
                                        "runs nowhere else).")] = "portable",
    simplify: Annotated[bool, typer.Option(help="Simplify the graph with onnxsim.")] = True,
    verify: Annotated[bool, typer.Option(help="Run the file in onnxruntime against PyTorch after export.")] = True,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")] = None,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    num_classes: Annotated[int, typer.Option(help="Classes of the checkpoint's head.")] = 1000,
    max_rel: Annotated[float | None, typer.Option(help="Tolerance: max |a-b| / max |ref|.")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Tolerance: smallest cosine similarity.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Tolerance: top-1 agreement, 0..1.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for verification.")] = None,
    features: Annotated[bool, typer.Option("--features", help="Output the four stage maps (strides 4, 8, 16, 32), "
                                           "not the logits: a backbone for detection or segmentation.")] = False,
    with_slots: Annotated[str | None, typer.Option(
        "--with-slots", metavar="BLOCKS", help="With --features: also output the slot assignment maps "
        "(B x 64 x H x W) of these GLMix blocks: S.B[,S.B...] (checkpoint indices), 'last' or 'all'.")] = None,
) -> None:
    """Export a GLNet to one self-contained ONNX file and verify it against PyTorch."""
    from export.formats import build, check_options, default_output, get_format
    from export.onnx import parse_input_size
    from verification.artifact import VerifyOptions, verify_onnx

    fmt = get_format("onnxruntime")  # the portable ONNX (with --target onnxruntime: rewritten for onnxruntime)
    options: dict[str, Any] = dict(opset=opset, input_size=parse_input_size(input_size), batch=batch, dynamic=dynamic,
                   simplify=simplify, features=features, target=target,
                   slot_blocks=tuple(b for b in (with_slots or "").split(",") if b.strip()))
    check_options(fmt, **options)
    vopts = VerifyOptions(batch=batch, max_rel=max_rel, min_cosine=min_cosine, min_top1=min_top1, threads=threads)
    vopts.validate()  # before the export, not after it
    if num_classes < 1:
        raise fail(f"--num-classes must be >= 1, not {num_classes}")
    output = output or default_output(fmt, model)
    net, sha256 = model_from_options(model, checkpoint, num_classes, use_ema)

    with err.status("exporting") as status:
        result = build(fmt, net, output, checkpoint_sha256=sha256, progress=status.update, **options)
        report = None
        if verify:
            report = verify_onnx(result.path, net, vopts, progress=status.update)

    finish_export(result, report, _summary(result, checkpoint), json_path, "PyTorch")


def _summary(result, checkpoint: Path | None) -> Table:  # type: ignore[no-untyped-def]
    meta = result.metadata
    table = Table(show_header=False, box=None, title=f"[bold]{meta.model}[/] -> {result.path}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    weights = (f"{checkpoint} (sha256 {meta.checkpoint_sha256[:16]}...)" if checkpoint
               else "[bold yellow]RANDOM[/] (no --checkpoint)")
    dims = ["batch" if meta.dynamic in ("batch", "shape") else str(result.batch), "3"]
    h, w = meta.input_size
    dims += ["height", "width"] if meta.dynamic == "shape" else [str(h), str(w)]
    table.add_row("file", f"{result.path} ({human_bytes(result.size_bytes)})")
    table.add_row("weights", weights)
    table.add_row("input", escape(f"{meta.input_name} float32 [{', '.join(dims)}], {meta.color_order}, "
                                  f"ImageNet mean/std, {h}x{w}"))
    if meta.task == "features":
        table.add_row("outputs", escape(", ".join(meta.outputs) + f" float32 [{dims[0]}, C, H/s, W/s]"))
    else:
        table.add_row("output", escape(f"{meta.output_name} float32 [{dims[0]}, {meta.num_classes}]"))
    table.add_row("opset", str(result.opset))
    simplified = "after onnxsim + optimizer" if result.simplified else "after optimizer (not simplified)"
    table.add_row("nodes", f"{result.nodes_exported} exported -> {result.nodes_final} {simplified}")
    table.add_row("dynamic", meta.dynamic + ("" if meta.dynamic == "none" else
                                             f" ({', '.join(result.dynamic_axes['input'])})"))
    if result.passes is not None:
        table.add_row("target", target_line(meta, result.passes))
    table.add_row("time", f"{result.seconds:.1f} s")
    return table


def target_line(meta, passes) -> str:  # type: ignore[no-untyped-def]
    ops = ", ".join(meta.contrib_ops) or "no contrib ops"
    return escape(f"{meta.target} only (needs {meta.requires}; {ops}); rewritten: {passes.describe()}")
