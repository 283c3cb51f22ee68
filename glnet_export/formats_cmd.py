"""`glnet-export formats`: the format table, and whether each format can be built here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, handle_errors, out, write_json


@handle_errors
def formats(
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the table as JSON ('-': stdout).")] = None,
) -> None:
    """List every format glnet-export builds: from what, with which converter, run by which runtime."""
    from export.formats import FORMATS

    rows = [(f, f.missing()) for f in FORMATS.values()]
    if json_path is not None:
        write_json([{"name": f.name, "built_from": f.built_from, "converter": f.converter, "options": dict(f.options),
                     "runtime": f.runtime, "precision": f.precision, "calibrated": f.calibrated, "gpu": f.gpu,
                     "available": why is None, "missing": why, "description": f.description} for f, why in rows],
                   json_path)
        if str(json_path) == "-":
            return
    table = Table(title="Formats (`bench --model M --formats a,b` takes these names)", title_justify="left")
    for name in ("format", "built from", "converter", "runtime", "computes in", "here"):
        table.add_column(name)
    hints: dict[str, int] = {}  # each install hint once, numbered in the caption
    for f, why in rows:
        options = ", ".join(f"{k}={v}" for k, v in f.options.items())
        converter = f"{f.converter} {options}" if options else f.converter or "-"
        here = "[green]yes[/]"
        if why is not None:
            hint = hints.setdefault(f.install or why, len(hints) + 1)
            here = f"[yellow]no[/] ({hint})"
        table.add_row(f.name, f.built_from if f.converter else "-", escape(converter), f.runtime, f.precision, here)
    table.caption = "\n".join(f"({n}) {escape(text)}" for text, n in hints.items()) or None
    out.print(table)
