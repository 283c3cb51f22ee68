"""Draw GLNet's semantic slots over an image, the way the paper shows them.

A feature artifact exported with `--with-slots` outputs, per chosen GLMix block, the
pixel-to-slot assignment (64 x H x W, summing to 1 over the slots). Each pixel is
coloured by its dominant slot, with the region borders darkened, and blended over the
image; optionally a grid beside it shows the few largest slots' own maps as heat maps.

What is drawn is what the network saw: an artifact with dynamic height and width gets the
whole image (aspect kept, sides rounded to a multiple of 32); a fixed-size artifact gets
its usual centre crop, and the picture is that crop, at the photograph's own resolution.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from artifacts.atomic import atomic_outputs, check_writable
from artifacts.errors import GlnetExportError
from artifacts.metadata import ArtifactMetadata
from artifacts.preprocess import preprocess, resample_filter

from .predictor import Predictor

SLOTS_PREFIX = "slots_"  # as glnet.features names the outputs (not imported: that pulls in torch)
WORK_SIDE = 320  # maps are upsampled smoothly to at most this long side, then scaled to the picture
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)  # inferno


class SlotMapError(GlnetExportError, ValueError):
    """The artifact has no slot maps, or not the one asked for."""


@dataclass
class SlotMapResult:
    path: Path
    image: str
    artifact: str
    block: str
    size: tuple[int, int]  # the written picture, width x height
    region: tuple[int, int, int, int]  # the part of the image the network saw: left, top, right, bottom
    map_size: tuple[int, int]  # the slot map's height x width
    slots_used: int  # slots that are dominant somewhere
    grid_slots: list[int]  # slots shown one by one, largest first


def slot_outputs(outputs: tuple[str, ...] | list[str]) -> list[str]:
    return [o for o in outputs if o.startswith(SLOTS_PREFIX)]


def choose_output(outputs: tuple[str, ...] | list[str], block: str | None, artifact: str) -> str:
    """The slot output for `block` (`stages.2.blocks.0` or `2.0`); the first one by default."""
    available = slot_outputs(outputs)
    if not available:
        raise SlotMapError(f"{artifact} has no slot maps: export it with "
                           "`glnet-export onnx --features --with-slots BLOCKS`")
    if block is None:
        return available[0]
    parts = block.split(".")
    wanted = f"stages.{parts[0]}.blocks.{parts[1]}" if len(parts) == 2 else block
    if SLOTS_PREFIX + wanted not in available:
        names = ", ".join(a[len(SLOTS_PREFIX):] for a in available)
        raise SlotMapError(f"{artifact} has no slot map of {block!r}; it has {names}")
    return SLOTS_PREFIX + wanted


def network_input(img: Image.Image, meta: ArtifactMetadata) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The 1 x 3 x H x W input for `img` and the region of `img` it covers."""
    if meta.dynamic == "shape":
        side = min(meta.input_size)
        scale = side / min(img.size)
        w, h = (max(64, round(s * scale / 32) * 32) for s in img.size)
        full = img.resize((w, h), resample_filter(meta))
        return _normalise(full, meta), (0, 0, img.width, img.height)
    out_h, out_w = meta.input_size
    # preprocess()'s resize and centre crop, mapped back to the image's own pixels.
    scale = max(out_h, out_w) / meta.crop_pct / min(img.size)
    new_w, new_h = max(out_w, round(img.width * scale)), max(out_h, round(img.height * scale))
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    fx, fy = img.width / new_w, img.height / new_h
    region = (round(left * fx), round(top * fy), round((left + out_w) * fx), round((top + out_h) * fy))
    return preprocess(img, meta), region


def _normalise(img: Image.Image, meta: ArtifactMetadata) -> np.ndarray:
    # preprocess() without its resize and crop (its resize rule assumes a centre crop follows).
    arr: np.ndarray = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if meta.color_order.upper() == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)


def palette(n: int = 64) -> np.ndarray:
    """n distinct colours (golden-ratio hues, alternating saturation and brightness)."""
    colours = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, (0.95, 0.6)[i % 2], (0.95, 0.75)[(i // 2) % 2])
               for i in range(n)]
    return (np.array(colours) * 255).round().astype(np.uint8)


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """64 x h x w -> 64 x H x W (size is W, H), bilinear, through PIL's float images."""
    return np.stack([np.asarray(Image.fromarray(m.astype(np.float32), "F").resize(size, Image.Resampling.BILINEAR))
                     for m in maps])


def render(picture: Image.Image, maps: np.ndarray, alpha: float = 0.55, grid: int = 0) -> tuple[Image.Image, list[int]]:
    """The dominant slot per pixel blended over `picture`, plus a grid of `grid` slots' maps."""
    width, height = picture.size
    shrink = min(1.0, WORK_SIDE / max(width, height))
    work = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    smooth = _upsample(maps, work)
    labels = smooth.argmax(0)
    colours = palette(maps.shape[0])[labels]
    # Borders between slot regions, darkened, so that neighbouring similar colours still separate.
    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    colours[edge] = colours[edge] // 3
    overlay = Image.fromarray(colours, "RGB").resize(picture.size, Image.Resampling.NEAREST)
    blended = Image.blend(picture, overlay, alpha)
    areas = np.bincount(labels.ravel(), minlength=maps.shape[0])
    shown = [int(k) for k in np.argsort(-areas, kind="stable")[:grid] if areas[k] > 0] if grid > 0 else []
    if not shown:
        return blended, []
    cols = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / cols)
    tile_h = height // rows
    tile_w = max(1, round(width * tile_h / height))
    canvas = Image.new("RGB", (width + cols * tile_w, height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    dim = picture.resize((tile_w, tile_h), Image.Resampling.BILINEAR)
    for i, k in enumerate(shown):
        m = np.asarray(Image.fromarray(smooth[k], "F").resize((tile_w, tile_h), Image.Resampling.BILINEAR))
        # Stretched to its own range: a slot's share of a pixel is often far below 1 everywhere.
        low, high = float(m.min()), float(m.max())
        heat = _heat((m - low) / max(high - low, 1e-12))
        tile = Image.blend(dim, Image.fromarray(heat, "RGB"), 0.7)
        canvas.paste(tile, (width + (i % cols) * tile_w, (i // cols) * tile_h))
    return canvas, shown


def _heat(values: np.ndarray) -> np.ndarray:
    """Values in 0..1 -> an inferno-like colour ramp (uint8 RGB), without matplotlib."""
    stops = np.linspace(0.0, 1.0, len(_HEAT))
    channels = [np.interp(values, stops, _HEAT[:, c]) for c in range(3)]
    return np.stack(channels, -1).round().astype(np.uint8)


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
