"""`glnet-export models`: the variants, their parameters and multiply-accumulates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import checked_output, handle_errors, out, write_json


@handle_errors
def models(
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the table as JSON ('-': stdout).")] = None,
    tiny: Annotated[bool, typer.Option(help="Include the tiny test variants.")] = True,
) -> None:
    """List the GLNet variants with parameters and MACs at 224 x 224."""
    import glnet
    from glnet.complexity import count_complexity

    rows = [(glnet.get_config(n), count_complexity(n)) for n in glnet.list_models(include_tiny=tiny)]
    if json_path is not None:
        write_json([{"name": c.name, "params": c.params, "macs_224": c.macs, "description": cfg.description,
                     "tiny": cfg.tiny} for cfg, c in rows], json_path)
        if str(json_path) == "-":
            return
    table = Table(title="GLNet variants (multiply-accumulates for one 224 x 224 image)")
    table.add_column("model")
    table.add_column("params", justify="right")
    table.add_column("MACs", justify="right")
    table.add_column("dims")
    table.add_column("depths")
    table.add_column("note")
    for cfg, c in rows:
        table.add_row(c.name, f"{c.params / 1e6:.1f} M", f"{c.macs / 1e9:.2f} G",
                      ",".join(map(str, cfg.dims)), ",".join(map(str, cfg.depths)), cfg.description)
    out.print(table)
