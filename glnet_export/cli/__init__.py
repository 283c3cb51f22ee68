"""The `glnet-export` command: a thin layer that parses options, calls library functions
and renders their typed results (rich tables for people, `--json` for machines)."""

from __future__ import annotations

import typer

from . import models_cmd, onnx_cmd, openvino_cmd, predict_cmd, slots_cmd, tensorrt_cmd, verify_cmd
from .bench_cmd import app as bench_app
from .benchmark_cmd import benchmark
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
app.command("onnx")(onnx_cmd.onnx)
app.command("openvino")(openvino_cmd.openvino)
app.command("verify")(verify_cmd.verify)
app.command("predict")(predict_cmd.predict)
app.command("tensorrt")(tensorrt_cmd.tensorrt)
app.command("slots")(slots_cmd.slots)
app.add_typer(bench_app, name="bench")
app.command("benchmark")(benchmark)
app.command("serve")(serve)
app.command("triton")(triton)


def main() -> None:
    app()
