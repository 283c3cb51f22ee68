"""`glnet-export slots ARTIFACT IMAGE -o map.png`: GLNet's semantic slots drawn over an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import checked_output, handle_errors, out, write_json


@handle_errors
def slots(
    artifact: Annotated[Path, typer.Argument(help="A feature artifact exported with --features --with-slots.")],
    image: Annotated[Path, typer.Argument(help="An image file.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Picture to write (default: IMAGE_slots.png).")
                      ] = None,
    block: Annotated[str | None, typer.Option(help="Whose slots: stages.S.blocks.B or S.B (default: the first).")
                     ] = None,
    grid: Annotated[int, typer.Option(min=0, max=64, help="Also show the N largest slots' own maps beside it "
                                      "(GLMix has 64 slots).")] = 0,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Opacity of the slot colours.")] = 0.55,
    device: Annotated[str, typer.Option(help="Device of the artifact's back-end.")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the result as JSON ('-': stdout).")] = None,
) -> None:
    """Colour each pixel by its dominant semantic slot, blended over the image."""
    from serving.slot_maps import draw_slot_maps

    output = output or Path(f"{image.stem}_slots.png")
    result = draw_slot_maps(artifact, image, output, block=block, grid=grid, alpha=alpha, device=device)
    write_json(result, json_path)
    if json_path is not None and str(json_path) == "-":
        return
    w, h = result.size
    mh, mw = result.map_size
    out.print(escape(f"{result.path} ({w}x{h}): slots of {result.block}, a {mh}x{mw} map; "
                     f"{result.slots_used} of 64 slots dominate somewhere")
              + (f"; grid: slots {', '.join(map(str, result.grid_slots))}" if result.grid_slots else ""))
