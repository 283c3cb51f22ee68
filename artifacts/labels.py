"""Class names for the artifacts' outputs."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

from .metadata import IMAGENET_LABELS


@lru_cache(maxsize=1)
def _imagenet1k_rows() -> tuple[tuple[str, str], ...]:
    """(WordNet synset ID, all names) of the 1000 ImageNet-1k classes, in index order."""
    text = resources.files("artifacts").joinpath("data/imagenet1k_classes.tsv").read_text(encoding="utf-8")
    rows: list[tuple[str, str]] = []
    for line in text.splitlines()[1:]:
        index, synset, label = line.split("\t")
        assert int(index) == len(rows), "class file out of order"
        rows.append((synset, label))
    return tuple(rows)


@lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, index order (first synonym of each class)."""
    return tuple(label.split(",")[0].strip() for _synset, label in _imagenet1k_rows())


@lru_cache(maxsize=1)
def imagenet1k_synsets() -> tuple[str, ...]:
    """The WordNet synset IDs of the 1000 classes in index order (n01440764 is class 0): the
    sorted-synset order of torchvision's and timm's ImageNet models."""
    return tuple(synset for synset, _label in _imagenet1k_rows())


@lru_cache(maxsize=1)
def imagenet1k_synset_index() -> Mapping[str, int]:
    """Synset ID -> class index (n01440764 -> 0). Built once: labelled sets look up every
    image's synset; read-only, as every caller shares the one mapping."""
    return MappingProxyType({synset: i for i, synset in enumerate(imagenet1k_synsets())})


def labels_for(labels: str, num_classes: int) -> tuple[str, ...]:
    """Names for `num_classes` outputs: ImageNet names when they fit, else "class N"."""
    if labels == IMAGENET_LABELS and num_classes == 1000:
        return imagenet1k_labels()
    return tuple(f"class {i}" for i in range(num_classes))
