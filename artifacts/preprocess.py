"""Image preprocessing as an artifact's metadata describes it (resize, crop, normalise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import GlnetExportError
from .metadata import ArtifactMetadata

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


def resample_filter(meta: ArtifactMetadata) -> Image.Resampling:
    """The PIL filter of the artifact's resize (bicubic where the metadata names none we know)."""
    return _RESAMPLE.get(meta.interpolation, Image.Resampling.BICUBIC)


class ImageError(GlnetExportError, ValueError):
    """An image that cannot be read or used."""


def load_image(source: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a path, a PIL image or an H x W x 3 uint8 array."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ImageError(f"expected an H x W x 3 uint8 RGB array, got {source.shape} {source.dtype}")
        return Image.fromarray(source, "RGB")
    path = Path(source)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def preprocess(
    image: str | Path | Image.Image | np.ndarray,
    meta: ArtifactMetadata,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """A 1 x 3 x H x W float32 array: resize the shorter side, centre-crop, normalise.

    `size` overrides the metadata's input size (for dynamic-shape artifacts).
    """
    img = load_image(image)
    out_h, out_w = size or meta.input_size
    scale = max(out_h, out_w) / meta.crop_pct / min(img.size)
    new_w, new_h = max(out_w, round(img.width * scale)), max(out_h, round(img.height * scale))
    img = img.resize((new_w, new_h), resample_filter(meta))
    left, top = (new_w - out_w) // 2, (new_h - out_h) // 2
    img = img.crop((left, top, left + out_w, top + out_h))
    arr: np.ndarray = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if meta.color_order.upper() == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(meta.mean, np.float32)) / np.asarray(meta.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)
