"""`glnet-export openvino`: an OpenVINO IR in fp32, fp16 or int8, written atomically, then
verified against PyTorch with the precision that actually ran."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import (
    checked_output,
    err,
    finish_export,
    handle_errors,
    human_bytes,
    model_from_options,
    openvino_precision,
    reference_for,
)
from .int8_options import Data, GlmixFloat, KeepFloat, Labels, Limit, MaxDrop, budget_from_options, keep_float_names

if TYPE_CHECKING:
    from export.openvino import OpenVinoResult
    from verification.openvino import OpenVinoVerification


@handle_errors
def openvino(
    source: Annotated[Path | None, typer.Argument(help="ONNX file from `glnet-export onnx` (or use --model).")]
    = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Variant to export through ONNX first.")]
    = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Trained weights (.pth).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="IR .xml (default: NAME.xml, "
                                                "NAME_fp16.xml, NAME_int8.xml); the .bin goes beside it.")] = None,
    precision: Annotated[str, typer.Option(help="What the IR stores: fp32 | fp16 (weights) | int8 (NNCF).")]
    = "fp32",
    compute: Annotated[str, typer.Option(help="Compute precision the IR is built for: auto (the device's own "
                                         "choice, bf16 on CPUs that have it) | f32 (residual convolutions "
                                         "folded into their kernels, about 3% faster in f32; apps load it with "
                                         "INFERENCE_PRECISION_HINT=f32).")] = "auto",
    calib: Annotated[Path | None, typer.Option("--calib", help="int8: a folder of calibration images.")] = None,
    calib_count: Annotated[int, typer.Option(help="int8: at most this many calibration images.")] = 300,
    glmix_float: GlmixFloat = True,
    keep_float: KeepFloat = None,
    int8_depthwise: Annotated[bool, typer.Option(help="int8: quantize the depthwise convolutions too; "
                                                 "--no-int8-depthwise leaves them in the device's float "
                                                 "precision (bf16 on CPUs that have it).")] = True,
    max_drop: MaxDrop = None,
    data: Data = None,
    labels: Labels = None,
    limit: Limit = None,
    verify: Annotated[bool, typer.Option(help="Run the IR against PyTorch after the build.")] = True,
    infer_precision: Annotated[str, typer.Option(help="Compute precision asked for the check: fp32 (pinned, "
                                                 "measures the conversion) | bf16 | fp16 | default (the "
                                                 "device's own, bf16 on CPUs that have it).")] = "fp32",
    device: Annotated[str, typer.Option(help="OpenVINO device for the check: CPU, GPU, NPU.")] = "CPU",
    input_size: Annotated[str, typer.Option("--input-size", help="With --model: N or HxW.")] = "224",
    dynamic: Annotated[str, typer.Option(help="With --model: none | batch | shape.")] = "batch",
    num_classes: Annotated[int, typer.Option(help="Classes of the checkpoint's head.")] = 1000,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    max_rel: Annotated[float | None, typer.Option(help="Tolerance: max |a-b| / max |ref|.")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Tolerance: smallest cosine similarity.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Tolerance: top-1 agreement, 0..1.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for verification.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")]
    = None,
) -> None:
    """Convert an ONNX file (or a --model, through ONNX) to an OpenVINO IR and verify it against PyTorch."""
    from artifacts.errors import OptionError
    from export.formats import build, check_options, default_output, openvino_format
    from export.onnx import OnnxExportOptions, parse_input_size
    from export.openvino import read_onnx_metadata
    from verification.artifact import VerifyOptions
    from verification.openvino import verify_openvino

    if (source is None) == (model is None):
        raise OptionError("give either an ONNX file or --model (with --checkpoint for trained weights)")
    asked = openvino_precision(infer_precision, "--infer-precision")
    fmt = openvino_format(precision)
    options: dict[str, Any] = dict(precision=precision, calib_count=calib_count, glmix_float=glmix_float,
                                   keep_float=keep_float_names(keep_float), int8_depthwise=int8_depthwise,
                                   compute=compute,
                                   budget=budget_from_options(max_drop, data, labels, limit, precision))
    check_options(fmt, calib, **options)  # int8 without --calib fails here, before any slow work
    vopts = VerifyOptions(max_rel=max_rel, min_cosine=min_cosine, min_top1=min_top1, threads=threads,
                          precision=asked, device=device)
    if verify:
        from runtimes.openvino import check_device

        vopts.validate()
        check_device(device)  # a device this machine lacks fails now, not after the IR is written
    # In the working folder, named after the source file or the model.
    output = output or default_output(fmt, Path(source).stem if source is not None else str(model), **options)

    with err.status("converting") as status:
        if model is not None:
            onnx_options: dict[str, Any] = dict(input_size=parse_input_size(input_size), dynamic=dynamic)
            OnnxExportOptions(**onnx_options).validate()
            reference, sha = model_from_options(model, checkpoint, num_classes, use_ema)
            result = build(fmt, reference, output, calib=calib, checkpoint_sha256=sha, progress=status.update,
                           onnx_options=onnx_options, **options)
        else:
            assert source is not None
            # The reference first: a wrong --checkpoint fails before the IR is written.
            reference = reference_for(source, read_onnx_metadata(source), checkpoint, use_ema) if verify else None
            result = build(fmt, source, output, calib=calib, progress=status.update, **options)
        verification = None
        if verify:
            verification = verify_openvino(result.xml, reference, vopts, progress=status.update)

    report = verification.report if verification is not None else None
    finish_export(result, report, _summary(result, source, checkpoint, verification), json_path,
                  report.reference if report is not None else "", verification)


def _summary(result: OpenVinoResult, source: Path | None, checkpoint: Path | None,
             verification: OpenVinoVerification | None) -> Table:
    meta = result.metadata
    table = Table(show_header=False, box=None, title=f"[bold]{meta.model}[/] -> {result.xml}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("files", f"{result.xml} ({human_bytes(result.xml_bytes)}) + {result.bin.name} "
                           f"({human_bytes(result.bin_bytes)})")
    table.add_row("from", str(source) if source is not None else f"--model {meta.model} (through ONNX)")
    weights = (f"{checkpoint or 'checkpoint'} (sha256 {meta.checkpoint_sha256[:16]}...)" if meta.checkpoint_sha256
               else "[bold yellow]RANDOM[/]" if meta.random_weights else "trained")
    table.add_row("weights", weights)
    h, w = meta.input_size
    table.add_row("input", escape(f"{meta.input_name} float32, dynamic {meta.dynamic}, {h}x{w}"))
    table.add_row("precision", f"IR stores {result.precision}" + _runs_as(verification))
    if result.precision == "int8":
        q = meta.quantization
        ops, kept = (q.ops_line(), q.kept_float) if q else ("", "")
        table.add_row("int8", f"{ops} in int8 ({result.int8_nodes} FakeQuantize nodes from {result.calib_images} "
                              f"calibration images); kept in float: {kept}")
        if q is not None and q.budget is not None:
            table.add_row("budget", escape(q.budget.describe()))
    table.add_row("compute", _compute(result))
    table.add_row("nodes", str(result.nodes))
    table.add_row("time", f"{result.seconds:.1f} s")
    return table


def _compute(result: OpenVinoResult) -> str:
    if result.metadata.compute_precision != "f32":
        return "the device's own choice (bf16 on CPUs with AVX512_BF16): load it with no precision hint"
    folded = result.passes.get("residual_fold", 0)
    return (f"built for f32 ({folded} residual convolutions folded): load it with "
            "INFERENCE_PRECISION_HINT=f32 (glnet-export's runner reads that from the file)")


def _runs_as(v: OpenVinoVerification | None) -> str:
    if v is None:
        return ""
    asked = v.requested_precision or "the device's default"
    return (f"; on {v.device} (asked {asked}) it runs as [bold]{v.precision}[/] "
            f"(float layers {v.float_precision}, weights {v.weights_precision})")
