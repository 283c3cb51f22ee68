"""Labelled images for measuring accuracy: a folder (or a labels file) read into image paths
and class indices in the model's output order, a seeded class-balanced sample of them, and
the images decoded on worker threads into preprocessed batches.

    labelled = read_labelled(Path("val"), class_names=labels_for(meta.labels, meta.num_classes))
    for batch in iter_batches(labelled, meta, batch_size=32):
        logits = run(batch.images)           # N x 3 x H x W float32, as the artifact wants it
        ...batch.labels                        # N class indices
    labelled.unreadable                        # the images that could not be decoded, skipped

The layouts `read_labelled` recognises (`LabelledSet.layout` says which it found):

- "synset-folders": one folder per class named by its WordNet synset ID (n01440764), as
  ImageNet's train and val trees; class = the synset's place in the sorted ImageNet-1k
  list (`artifacts/data/imagenet1k_classes.tsv`), the order of torchvision and timm models.
- "index-folders": folders named by class index (0, 1, 2, ...).
- "name-folders": folders named by the artifact's class names (`class_names`; case and
  `_` for space do not matter: kit_fox is "kit fox").
- "labels-file": a `path,label` CSV (or `path label` lines); label a synset, an index or a
  name; paths relative to DIR or to the file's folder; a header row is allowed.
- "ilsvrc-devkit" and "ilsvrc-kaggle": the flat ILSVRC2012 validation folder with the
  devkit's ground truth (and meta.mat) or Kaggle's LOC_val_solution.csv (`artifacts.ilsvrc`).
"""

from __future__ import annotations

import csv
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from . import ilsvrc
from .calibration import IMAGE_SUFFIXES
from .errors import LabelledDataError
from .labels import imagenet1k_labels, imagenet1k_synset_index
from .metadata import ArtifactMetadata
from .preprocess import ImageError, preprocess

__all__ = ["Batch", "LabelledDataError", "LabelledSet", "Layout", "Unreadable", "balanced_sample", "iter_batches",
           "read_labelled"]

Layout = Literal["synset-folders", "index-folders", "name-folders", "labels-file", "ilsvrc-devkit", "ilsvrc-kaggle"]
SYNSET = re.compile(r"^n\d{8}$")
_HEADER_WORDS = {"path", "image", "file", "filename", "image_path", "label", "class", "synset"}


@dataclass(frozen=True)
class Unreadable:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class LabelledSet:
    """Images and their classes, in the model's output order."""

    root: Path  # the --data folder
    paths: list[Path]
    labels: np.ndarray  # int64, one class index per path
    class_names: tuple[str, ...]  # index -> name: the artifact's, ImageNet's for synsets, or () if unknown
    layout: Layout
    source: str  # what was read, in words
    found: int  # images listed before any --limit
    unreadable: list[Unreadable] = field(default_factory=list)  # listed files missing, or found undecodable

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def classes(self) -> int:
        """How many distinct classes the images cover."""
        return int(np.unique(self.labels).size)

    def counts(self) -> dict[int, int]:
        """Images per class index."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


class Batch(NamedTuple):
    images: np.ndarray  # N x 3 x H x W float32, preprocessed as the artifact's metadata says
    labels: np.ndarray  # N int64
    positions: np.ndarray  # N places in LabelledSet.paths


def read_labelled(data: Path, labels: Path | None = None, class_names: Sequence[str] | None = None,
                  limit: int | None = None, seed: int = 0) -> LabelledSet:
    """The labelled images of `data`: class folders, or the images a `labels` file lists.

    `class_names`: the artifact's classes in output order (`artifacts.labels.labels_for`);
    needed for folders named by class, and bounds every index (a label beyond them is an
    error). `limit`: a class-balanced sample of that many images (`balanced_sample`), the
    same for the same `seed`. Raises `LabelledDataError` on data that cannot be used.
    """
    data = Path(data)
    if not data.is_dir():
        raise LabelledDataError(f"--data {data} {'is not a folder' if data.exists() else 'does not exist'}")
    if limit is not None and limit < 1:
        raise LabelledDataError(f"--limit must be >= 1, not {limit}")
    classes = _ClassIndex(class_names)
    found = _from_labels_file(data, Path(labels), classes) if labels is not None else _from_folder(data, classes)
    if limit is None or limit >= len(found):
        return found
    keep = balanced_sample(found.labels, limit, seed)
    return replace(found, paths=[found.paths[i] for i in keep], labels=found.labels[keep],
                   source=f"{found.source}; a class-balanced sample of {limit} (seed {seed})")


def balanced_sample(labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """Positions of `limit` items, round-robin over the classes: classes in a seeded random
    order, each class's items in a seeded random order, one item of each class per round,
    so class counts differ by at most one until a class runs out. Sorted positions."""
    rng = np.random.default_rng(seed)
    order = np.unique(labels)
    rng.shuffle(order)
    queues = [rng.permutation(np.flatnonzero(labels == c)) for c in order]
    chosen: list[int] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if len(chosen) == limit:
                return np.sort(np.asarray(chosen, dtype=np.int64))
            if depth < len(queue):
                chosen.append(int(queue[depth]))
    return np.sort(np.asarray(chosen, dtype=np.int64))


def iter_batches(labelled: LabelledSet, meta: ArtifactMetadata, batch_size: int,
                 threads: int | None = None) -> Iterator[Batch]:
    """Preprocessed batches of `labelled`, decoded ahead on `threads` worker threads (default:
    the CPU count, at most 8; PIL decodes and resizes without holding the GIL).

    Images that cannot be decoded are skipped and recorded in `labelled.unreadable` (once,
    however often the set is iterated), so every runner given the same batches sees the
    same images.
    """
    if batch_size < 1:
        raise LabelledDataError(f"--batch must be >= 1, not {batch_size}")
    workers = threads or min(8, os.cpu_count() or 1)
    known = {u.path for u in labelled.unreadable}
    ahead = max(2 * batch_size, workers)  # decoded images kept in flight: two batches
    pending: deque[tuple[int, Future[np.ndarray]]] = deque()
    images: list[np.ndarray] = []
    index: list[int] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glnet-decode")
    try:
        position = 0
        while position < len(labelled.paths) or pending:
            while position < len(labelled.paths) and len(pending) < ahead:
                pending.append((position, pool.submit(preprocess, labelled.paths[position], meta)))
                position += 1
            at, future = pending.popleft()
            try:
                images.append(future.result()[0])
                index.append(at)
            except (ImageError, ValueError, ZeroDivisionError, Image.DecompressionBombError) as exc:
                path = labelled.paths[at]
                if path not in known:
                    known.add(path)
                    labelled.unreadable.append(Unreadable(path, _reason(exc, path)))
            if len(images) == batch_size or (images and not pending and position == len(labelled.paths)):
                at_index = np.asarray(index, dtype=np.int64)
                yield Batch(np.stack(images), labelled.labels[at_index], at_index)
                images, index = [], []
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _reason(exc: BaseException, path: Path) -> str:
    text = str(exc)
    return text.removeprefix(f"{path}: ") if text else exc.__class__.__name__


class _ClassIndex:
    """Class index of a folder name or label: a synset ID, an index or a class name."""

    def __init__(self, class_names: Sequence[str] | None) -> None:
        self.names = tuple(class_names) if class_names is not None else None
        self._by_name: dict[str, list[int]] = {}
        for i, name in enumerate(self.names or ()):
            self._by_name.setdefault(_normal(name), []).append(i)

    @staticmethod
    def kind(token: str) -> str:
        return "synset" if SYNSET.match(token) else "index" if token.isdigit() else "name"

    def resolve(self, token: str, where: str) -> int:
        kind = self.kind(token)
        if kind == "synset":
            index = imagenet1k_synset_index().get(token)
            if index is None:
                raise LabelledDataError(f"{where}: {token} is not one of the 1000 ImageNet-1k synsets")
        elif kind == "index":
            index = int(token)
        else:
            index = self._name(token, where)
        count = len(self.names) if self.names is not None else 1000 if kind == "synset" else None
        if count is not None and index >= count:
            raise LabelledDataError(f"{where}: class {index} ({token}), but the artifact has {count} classes")
        return index

    def _name(self, token: str, where: str) -> int:
        if self.names is None:
            raise LabelledDataError(f"{where}: {token!r} is a class name, and no class names are known here: "
                                    "name classes by WordNet synset (n01440764) or class index (0, 1, ...)")
        hits = self._by_name.get(_normal(token), [])
        if len(hits) > 1:
            raise LabelledDataError(f"{where}: class name {token!r} is ambiguous (classes "
                                    f"{', '.join(map(str, hits))}): use the synset ID or class index")
        if not hits:
            examples = ", ".join(repr(n) for n in self.names[:2])
            raise LabelledDataError(f"{where}: unknown class {token!r}: not a WordNet synset (n01440764), a class "
                                    f"index (0 to {len(self.names) - 1}) or a class name of the artifact ({examples}, "
                                    "...)")
        return hits[0]


def _normal(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _names_for(classes: _ClassIndex, imagenet: bool) -> tuple[str, ...]:
    return classes.names if classes.names is not None else imagenet1k_labels() if imagenet else ()


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _from_folder(data: Path, classes: _ClassIndex) -> LabelledSet:
    folders = sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _images_in(data)
    if folders:
        if loose:
            raise LabelledDataError(f"{data} holds {len(loose)} image(s) beside {len(folders)} class folders "
                                    f"(e.g. {loose[0].name}): they have no class; move them into their class's "
                                    "folder, or pass --labels FILE")
        return _class_folders(data, folders, classes)
    if not loose:
        raise LabelledDataError(f"{data} holds no images (supported: {', '.join(sorted(IMAGE_SUFFIXES))})")
    if any(ilsvrc.image_number(p) is not None for p in loose):
        for name in (ilsvrc.KAGGLE_SOLUTION, ilsvrc.DEVKIT_GROUND_TRUTH):
            if (data / name).is_file():
                return _from_labels_file(data, data / name, classes)
    raise LabelledDataError(f"{data} holds {len(loose)} images and no labels: put them in one folder per class "
                            "(named by synset, class index or class name), or pass --labels FILE")


def _class_folders(data: Path, folders: list[Path], classes: _ClassIndex) -> LabelledSet:
    kinds = {classes.kind(f.name) for f in folders}
    if len(kinds) > 1:
        examples = "; ".join(f"{kind}: {next(f.name for f in folders if classes.kind(f.name) == kind)}"
                             for kind in sorted(kinds))
        raise LabelledDataError(f"the class folders of {data} are named in more than one way ({examples}): "
                                "name them all by synset, all by class index or all by class name")
    kind = kinds.pop()
    errors: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        try:
            index = classes.resolve(folder.name, f"class folder {folder.name!r} of {data}")
        except LabelledDataError as exc:
            errors.append(str(exc))
            continue
        images = _images_in(folder, recursive=True)
        paths += images
        labels += [index] * len(images)
    if errors:
        more = f" (and {len(errors) - 1} more folder(s))" if len(errors) > 1 else ""
        raise LabelledDataError(errors[0] + more)
    if not paths:
        raise LabelledDataError(f"the {len(folders)} class folders of {data} hold no images")
    layout: Layout = {"synset": "synset-folders", "index": "index-folders"}.get(kind, "name-folders")  # type: ignore[assignment]
    described = {"synset": "synset", "index": "class-index", "name": "class-name"}[kind]
    return LabelledSet(data, paths, np.asarray(labels, dtype=np.int64), _names_for(classes, kind == "synset"),
                       layout, f"{len(folders)} {described} folders in {data}", len(paths))


def _from_labels_file(data: Path, labels: Path, classes: _ClassIndex) -> LabelledSet:
    if not labels.is_file():
        raise LabelledDataError(f"--labels {labels} {'is not a file' if labels.exists() else 'does not exist'}")
    if ilsvrc.is_kaggle_solution(labels):
        by_number = {n: s for image_id, s in ilsvrc.kaggle_synsets(labels).items()
                     if (n := ilsvrc.image_number(Path(image_id))) is not None}
        return _ilsvrc_folder(data, by_number, classes, "ilsvrc-kaggle", labels, "Kaggle's, synsets")
    if ilsvrc.is_devkit_ground_truth(labels):
        beside = labels.parent / ilsvrc.DEVKIT_META
        meta_mat = beside if beside.is_file() else data / ilsvrc.DEVKIT_META
        by_number = ilsvrc.devkit_synsets(labels, meta_mat if meta_mat.is_file() else None)
        return _ilsvrc_folder(data, by_number, classes, "ilsvrc-devkit", labels,
                              f"the devkit's ILSVRC2012_IDs, mapped to synsets by {meta_mat}")
    return _labels_csv(data, labels, classes)


def _ilsvrc_folder(data: Path, by_number: dict[int, str], classes: _ClassIndex, layout: Layout, labels: Path,
                   how: str) -> LabelledSet:
    images = _images_in(data)
    if not images:
        raise LabelledDataError(f"{data} holds no images (the ILSVRC2012 validation layout is one flat folder of "
                                "ILSVRC2012_val_NNNNNNNN.JPEG)")
    paths, indices, unlabelled = [], [], []
    for path in images:
        number = ilsvrc.image_number(path)
        if number is None:
            raise LabelledDataError(f"{path}: not an ILSVRC2012_val_NNNNNNNN image, in an ILSVRC2012 validation "
                                    "folder")
        if number not in by_number:
            unlabelled.append(path.name)
            continue
        paths.append(path)
        indices.append(classes.resolve(by_number[number], f"{path.name} (in {labels.name})"))
    if unlabelled:
        raise LabelledDataError(f"{len(unlabelled)} image(s) of {data} have no label in {labels} "
                                f"(e.g. {unlabelled[0]})")
    return LabelledSet(data, paths, np.asarray(indices, dtype=np.int64), _names_for(classes, True), layout,
                       f"ILSVRC2012 validation images in {data}, labels from {labels} ({how})", len(paths))


def _labels_csv(data: Path, labels: Path, classes: _ClassIndex) -> LabelledSet:
    with open(labels, encoding="utf-8", newline="") as f:
        rows = [(n, _fields(line)) for n, line in enumerate(f, 1) if line.strip()]
    if rows and {part.lower() for part in rows[0][1]} & _HEADER_WORDS:
        rows = rows[1:]
    if not rows:
        raise LabelledDataError(f"--labels {labels} lists no images (expected path,label lines)")
    paths, indices, missing, errors = [], [], [], []
    for line_no, parts in rows:
        if len(parts) < 2:
            raise LabelledDataError(f"{labels} line {line_no}: expected path,label, got {','.join(parts)!r}")
        try:
            index = classes.resolve(parts[1], f"{labels.name} line {line_no}")
        except LabelledDataError as exc:
            errors.append(str(exc))
            continue
        path = _listed(parts[0], data, labels.parent)
        if path.is_file():
            paths.append(path)
            indices.append(index)
        else:
            missing.append(Unreadable(path, "no such file"))
    if errors:
        more = f" (and {len(errors) - 1} more line(s))" if len(errors) > 1 else ""
        raise LabelledDataError(errors[0] + more)
    if not paths:
        raise LabelledDataError(f"none of the {len(rows)} images {labels} lists exists (paths are read relative "
                                f"to {data} or to {labels.parent}); e.g. {missing[0].path}")
    kinds = {classes.kind(parts[1]) for _n, parts in rows}
    found = LabelledSet(data, paths, np.asarray(indices, dtype=np.int64), _names_for(classes, kinds == {"synset"}),
                        "labels-file", f"{labels}: {len(rows)} listed images", len(paths) + len(missing))
    found.unreadable.extend(missing)
    return found


def _fields(line: str) -> list[str]:
    """`path,label` (CSV quoting allowed), or `path label` as in Caffe's val.txt."""
    line = line.strip()
    parts = next(csv.reader([line])) if "," in line else line.rsplit(None, 1)
    return [part.strip() for part in parts]


def _listed(text: str, data: Path, beside: Path) -> Path:
    path = Path(text)
    if path.is_absolute():
        return path
    return next((base / path for base in (data, beside) if (base / path).is_file()), data / path)
