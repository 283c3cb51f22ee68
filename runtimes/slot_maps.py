"""Run a feature artifact with slot maps on an image and draw them (`glnet-export slots`).

The drawing itself is plain numpy and PIL (`glnet_export.slot_maps`); this module only
runs the artifact through the Predictor, so the picture shows what the shipped file computes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from glnet_export.atomic import atomic_outputs, check_writable
from glnet_export.slot_maps import SLOTS_PREFIX, SlotMapError, SlotMapResult, choose_output, network_input, render

from .predictor import Predictor


def draw_slot_maps(artifact: str | Path, image: str | Path, output: str | Path, block: str | None = None,
                   grid: int = 0, alpha: float = 0.55, device: str = "cpu") -> SlotMapResult:
    """Run `artifact` on `image` and write its slot map of `block` to `output` (PNG, JPEG, ...)."""
    if not 0.0 <= alpha <= 1.0 or grid < 0:
        raise SlotMapError(f"alpha must be within 0..1 and grid >= 0, not {alpha} and {grid}")
    output = Path(output)
    fmt = Image.registered_extensions().get(output.suffix.lower())
    if fmt is None:
        raise SlotMapError(f"{output}: unknown image type {output.suffix!r} (use .png)")
    check_writable(output)
    with Predictor(artifact, device=device) as predictor:
        name = choose_output(predictor.output_names, block, str(artifact))
        img = predictor.load_image(image)
        batch, region = network_input(img, predictor.metadata)
        maps = predictor.run(batch)[name][0]
    picture, shown = render(img.crop(region), maps, alpha=alpha, grid=grid)
    with atomic_outputs(output) as (temp,):
        picture.save(temp, format=fmt)
    used = int(np.unique(maps.argmax(0)).size)
    return SlotMapResult(path=output, image=str(image), artifact=str(artifact), block=name[len(SLOTS_PREFIX):],
                         size=picture.size, region=region, map_size=(maps.shape[1], maps.shape[2]),
                         slots_used=used, grid_slots=shown)
