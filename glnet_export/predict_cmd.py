"""`glnet-export predict ARTIFACT IMAGE...`: top-k classes, preprocessing from the metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, handle_errors, out, write_json


@handle_errors
def predict(
    artifact: Annotated[Path, typer.Argument(help="An exported artifact (.onnx, .xml, .engine).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes per image.")] = 5,
    device: Annotated[str, typer.Option(help="Device of the artifact's back-end.")] = "cpu",
    precision: Annotated[str | None, typer.Option(help="Ask OpenVINO for fp32|bf16|fp16.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write predictions as JSON ('-': stdout).")] = None,
) -> None:
    """Classify images with an exported artifact."""
    from serving.predictor import Predictor

    with Predictor(artifact, device, precision=precision, top_k=top_k) as predictor:
        result = predictor.predict([str(image) for image in images])  # a list in, a list out
        predictions = result if isinstance(result, list) else [result]
    write_json(predictions, json_path)
    if json_path is not None and str(json_path) == "-":
        return
    for p in predictions:
        out.print(f"[bold]{escape(p.image)}[/]  ({p.backend})")
        table = Table()
        table.add_column("rank", justify="right")
        table.add_column("class", justify="right")
        table.add_column("label")
        table.add_column("probability", justify="right")
        for rank, c in enumerate(p.top, 1):
            table.add_row(str(rank), str(c.index), c.label, f"{c.probability:.2%}")
        out.print(table)
