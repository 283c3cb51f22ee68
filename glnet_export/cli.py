"""The `glnet-export` command: a thin layer that parses options, calls library functions
and renders their typed results (rich tables for people, `--json` for machines)."""

from __future__ import annotations

import typer

from . import formats_cmd, models_cmd, onnx_cmd, openvino_cmd, ort_cmd, predict_cmd, slots_cmd, tensorrt_cmd, verify_cmd
from .accuracy_cmd import accuracy
from .bench_cmd import app as bench_app
from .bench_formats_cmd import bench_formats
from .debug_precision_cmd import debug_precision
from .doctor_cmd import doctor
from .serve_cmd import serve, triton

app = typer.Typer(
    name="glnet-export",
    help="Export GLNet to ONNX, OpenVINO and TensorRT, verify it against PyTorch, and benchmark it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("models")(models_cmd.models)
app.command("formats")(formats_cmd.formats)
app.command("onnx")(onnx_cmd.onnx)
app.command("ort")(ort_cmd.ort)
app.command("openvino")(openvino_cmd.openvino)
app.command("verify")(verify_cmd.verify)
app.command("predict")(predict_cmd.predict)
app.command("accuracy")(accuracy)
app.command("tensorrt")(tensorrt_cmd.tensorrt)
app.command("slots")(slots_cmd.slots)
app.command("debug-precision")(debug_precision)
app.add_typer(bench_app, name="bench")
app.command("benchmark", hidden=True)(bench_formats)  # its first name; `bench --model M` now
app.command("serve")(serve)
app.command("triton")(triton)
app.command("doctor")(doctor)


def main() -> None:
    """The console script: usage errors (a missing or invalid option, an unknown command)
    become one `Error:` line like every other error, instead of click's boxed usage text."""
    from rich.markup import escape
    from typer.exceptions import TyperException

    from .common import err

    try:
        code = app(standalone_mode=False)
    except TyperException as exc:  # click's UsageError family, vendored by Typer
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())  # a command group called bare: its help, as click would
            raise SystemExit(2) from None
        if not hasattr(exc, "format_message"):
            raise
        where = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
        err.print(f"[bold red]Error:[/] {escape(exc.format_message())}{where}", soft_wrap=True)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    raise SystemExit(code if isinstance(code, int) else 0)
