"""Calibration images for post-training quantization: a folder of pictures, preprocessed
exactly as the artifact's metadata says, so the ranges NNCF measures are the ranges the
deployed model sees."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GlnetExportError
from .metadata import MIN_SIDE, ArtifactMetadata
from .preprocess import ImageError, preprocess

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"})
DEFAULT_COUNT = 300  # NNCF's own default subset size; more rarely changes the ranges


class CalibrationError(GlnetExportError):
    """No calibration images could be used."""


@dataclass
class CalibrationSet:
    folder: Path
    samples: list[np.ndarray]  # each 1 x 3 x H x W float32
    skipped: list[str] = field(default_factory=list)  # files that could not be read, with why

    def __len__(self) -> int:
        return len(self.samples)


def image_paths(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (so a run is reproducible)."""
    folder = Path(folder)
    if not folder.is_dir():
        reason = "is not a folder" if folder.exists() else "does not exist"
        raise CalibrationError(f"no usable images in {folder}: the folder {reason}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_calibration(
    folder: str | Path,
    meta: ArtifactMetadata,
    count: int = DEFAULT_COUNT,
    size: tuple[int, int] | None = None,
    sizes: Sequence[tuple[int, int]] = (),
) -> CalibrationSet:
    """Up to `count` preprocessed images from `folder`; all of them when it has fewer.

    `sizes` (for artifacts with dynamic height and width): image i is preprocessed at
    sizes[i % len(sizes)], so the measured ranges cover the resolutions it will run at.

    Unreadable files are skipped and listed; a folder with none usable is an error, since
    quantizing without data would silently pick meaningless ranges.
    """
    if count < 1:
        raise CalibrationError(f"--calib-count must be >= 1, not {count}")
    folder = Path(folder)
    result = CalibrationSet(folder, [])
    for path in image_paths(folder):
        if len(result.samples) >= count:
            break
        try:
            at = sizes[len(result.samples) % len(sizes)] if sizes else size
            result.samples.append(preprocess(path, meta, size=at))
        except ImageError as exc:
            result.skipped.append(str(exc))
    if not result.samples:
        detail = f" ({len(result.skipped)} unreadable)" if result.skipped else ""
        raise CalibrationError(f"no usable images in {folder}{detail}; supported: "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    return result


class SampleBatches:
    """Preprocessed 1 x 3 x H x W samples fed `batch` at a time, as onnxruntime's CalibrationDataReader
    is fed (`get_next`); duck-typed so this module needs no onnxruntime."""

    def __init__(self, samples: Sequence[np.ndarray], input_name: str, batch: int) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {input_name: np.concatenate(samples[i : i + batch])} for i in range(0, len(samples) - batch + 1, batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def calibration_sizes(meta: ArtifactMetadata) -> list[tuple[int, int]]:
    """Resolutions to calibrate at: the export size, plus 0.75x and 1.5x when H, W are dynamic.

    Ranges measured at one size do not hold at others (glnet_tiny, dynamic shape, calibrated
    at 64 only: max rel error 0.23 at 128 x 128 and 0.11 at 49 x 81; at the three sizes:
    0.034 and 0.029, and 0.036 instead of 0.027 at 64).
    """
    h, w = meta.input_size
    if meta.dynamic != "shape":
        return [(h, w)]
    low = MIN_SIDE + 1  # a dynamic export starts at 33 (export.onnx)
    return [(h, w), (max(low, round(h * 0.75)), max(low, round(w * 0.75))), (round(h * 1.5), round(w * 1.5))]
