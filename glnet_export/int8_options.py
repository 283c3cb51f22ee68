"""The int8 options `ort --precision int8` and `openvino --precision int8` share: what stays in
float (`--glmix-float`, `--keep-float`; `tensorrt` takes `--keep-float` too, for fp16 as well)
and the accuracy budget (`--max-drop X --data DIR [--labels F] [--limit N]`, export.int8_budget)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from export.int8_budget import AccuracyBudget

GlmixFloat = Annotated[bool, typer.Option(
    help="int8: keep GLMix's L2 norms, slot softmaxes and logits MatMul in float.")]
KeepFloat = Annotated[str | None, typer.Option(
    "--keep-float", metavar="NAME[,NAME]", help="int8 (and fp16 for TensorRT): leave these blocks in float "
    "(checkpoint-layout names, e.g. stages.2.blocks.5, or stages.2 for a whole stage; see debug-precision).")]
MaxDrop = Annotated[float | None, typer.Option(
    "--max-drop", metavar="X", help="int8: the most top-1 accuracy int8 may lose against fp32 on the --data images, "
    "absolute, as a fraction (0.01 = one percentage point): blocks (ort) or operations (openvino, NNCF's "
    "accuracy control) go back to float until the measured drop is within it; none is: exit 1, nothing written.")]
Data = Annotated[Path | None, typer.Option(
    "--data", help="--max-drop: labelled validation images, read as `accuracy --data` reads them (class folders, "
    "or the images a --labels file lists); none of them may be a --calib image.")]
Labels = Annotated[Path | None, typer.Option(
    "--labels", help="--max-drop: path,label CSV, or the ILSVRC2012 devkit's or Kaggle's ground truth.")]
Limit = Annotated[int | None, typer.Option(
    "--limit", help="--max-drop: measure on a class-balanced sample of N of the --data images.")]


def keep_float_names(text: str | None) -> tuple[str, ...]:
    """--keep-float as the converters' `keep_float`: the text as given, or nothing; the converters
    split it at commas and check the names (artifacts.onnx_blocks.resolve_blocks)."""
    return (text,) if text else ()


def budget_from_options(max_drop: float | None, data: Path | None, labels: Path | None, limit: int | None,
                        precision: str) -> AccuracyBudget | None:
    """The budget the options ask for, or None; options that cannot go together refused in one line."""
    from artifacts.errors import OptionError
    from export.int8_budget import AccuracyBudget

    if max_drop is None:
        given = [name for name, value in (("--data", data), ("--labels", labels), ("--limit", limit))
                 if value is not None]
        if given:
            raise OptionError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --max-drop: the images "
                              "int8's top-1 drop is measured on")
        return None
    if precision != "int8":
        raise OptionError("--max-drop is for --precision int8: it bounds what int8 loses against fp32")
    if data is None:
        raise OptionError("--max-drop needs --data DIR: labelled images to measure the top-1 drop on (not the "
                          "--calib images)")
    budget = AccuracyBudget(max_drop, data, labels, limit)
    budget.validate()
    return budget
