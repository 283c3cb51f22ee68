"""Real photographs for verification, from the copies scikit-image ships.

Random inputs alone can hide errors that only show on natural image statistics (and say
nothing about top-1 agreement), so every verification runs photographs too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Colour photographs of everyday ImageNet-like subjects in skimage/data.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg", "color.png")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photo_paths(limit: int | None = None) -> list[Path]:
    """Paths of the photographs available on this machine (empty without scikit-image).

    Read straight from the package folder, without importing scikit-image (slow).
    """
    paths: list[Path] = []
    root = _package_dir("skimage")
    if root is not None:
        paths += [root / "data" / n for n in SKIMAGE_PHOTOS if (root / "data" / n).is_file()]
    sk = _package_dir("sklearn")
    if sk is not None:
        paths += sorted((sk / "datasets" / "images").glob("*.jpg"))
    return paths[:limit] if limit else paths
