"""Class names for the artifacts' outputs."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .metadata import IMAGENET_LABELS


@lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index order (first synonym of each class)."""
    text = resources.files("artifacts").joinpath("data/imagenet1k_classes.tsv").read_text(encoding="utf-8")
    names: list[str] = []
    for line in text.splitlines()[1:]:
        index, _synset, label = line.split("\t")
        assert int(index) == len(names), "class file out of order"
        names.append(label.split(",")[0].strip())
    return tuple(names)


def labels_for(labels: str, num_classes: int) -> tuple[str, ...]:
    """Names for `num_classes` outputs: ImageNet names when they fit, else "class N"."""
    if labels == IMAGENET_LABELS and num_classes == 1000:
        return imagenet1k_labels()
    return tuple(f"class {i}" for i in range(num_classes))
