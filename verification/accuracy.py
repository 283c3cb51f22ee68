"""Top-1 and top-5 accuracy of artifacts on a user's labelled images, and how each differs
from PyTorch on the very same images.

Every artifact runs as `predict` runs it: loaded by `runtimes.load`, its images
preprocessed as its own metadata says. The images are decoded once per preprocessing (on
worker threads, `artifacts.labelled.iter_batches`) and each batch goes through every
artifact and PyTorch in turn, so all of them score the same images, unreadable ones
skipped for all alike, and the per-image results pair up for the change from PyTorch
(`artifacts.scoring.paired_change`). Images per second count inference only: decoding
and resizing are shared and excluded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from artifacts.errors import GlnetExportError, OptionError
from artifacts.labelled import LabelledSet, iter_batches, read_labelled
from artifacts.labels import labels_for
from artifacts.metadata import ArtifactMetadata
from artifacts.scoring import PairedChange, Proportion, accuracy, hits_at, paired_change, top_k
from runtimes.base import Runner

if TYPE_CHECKING:
    from glnet.model import GLNet

# (what is running, images done, images in all): called after every batch.
Progress = Callable[[str, int, int], None]
PYTORCH = "pytorch"


class AccuracyError(GlnetExportError, ValueError):
    """Artifacts that cannot be scored together (no metadata, not classifiers, other classes)."""


@dataclass
class AccuracyOptions:
    batch: int = 32
    limit: int | None = None  # a class-balanced sample of this many images
    seed: int = 0  # the sample's seed
    device: str = "cpu"
    precision: str | None = None  # asked of OpenVINO (fp32 | bf16 | fp16); the result says what ran
    threads: int | None = None  # the runtimes' threads
    decode_threads: int | None = None  # image decoding threads (default: the CPU count, at most 8)

    def validate(self) -> None:
        for option, value in (("--batch", self.batch), ("--limit", self.limit), ("--threads", self.threads),
                              ("--decode-threads", self.decode_threads)):
            if value is not None and value < 1:
                raise OptionError(f"{option} must be >= 1, not {value}")


@dataclass
class FormatAccuracy:
    """One artifact (or PyTorch) on the labelled images."""

    name: str  # the artifact's path, or "pytorch"
    backend: str  # what ran it, e.g. "onnxruntime (cpu, fp32)"
    precision: str  # the precision that actually ran
    images: int  # scored (unreadable images left out)
    top1: Proportion
    top5: Proportion
    images_per_second: float  # inference only, at --batch
    change_from_pytorch: PairedChange | None = None  # top-1, paired on the same images
    top5_change_from_pytorch: PairedChange | None = None
    agreement_with_pytorch: Proportion | None = None  # share of images with PyTorch's top-1 class
    unreadable: list[str] = field(default_factory=list)


@dataclass
class AccuracyResult:
    data: str
    layout: str
    source: str  # what was read, in words
    images_found: int  # before --limit
    images: int  # scored
    classes: int  # distinct classes among them
    batch: int
    limit: int | None
    seed: int
    reference: str | None  # the PyTorch model the changes are measured from, or None
    rows: list[FormatAccuracy]
    unreadable: list[str] = field(default_factory=list)


@dataclass
class _Scores:
    """Per image, in batch order: the top-5 classes; and the inference time."""

    name: str
    runner: Runner
    top: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def run(self, x: np.ndarray) -> None:
        start = time.perf_counter()
        logits = np.asarray(self.runner.infer_batched(x), dtype=np.float32)
        self.seconds += time.perf_counter() - start
        self.top.append(top_k(logits, 5))


def evaluate_accuracy(artifacts: Sequence[str | Path], data: str | Path, labels: Path | None = None, *,
                      reference: GLNet | None = None, checkpoint: Path | None = None,
                      options: AccuracyOptions | None = None, progress: Progress | None = None) -> AccuracyResult:
    """Top-1 / top-5 of each artifact on the labelled images of `data` (`read_labelled`).

    `reference`: the PyTorch model the artifacts came from; it is scored too, and each
    artifact's change from it and agreement with it are measured on the same images.
    `checkpoint`: the file `reference` was loaded from, checked against each artifact's
    metadata (a change from another model's weights would mean nothing).
    """
    from verification.reference import check_checkpoint_matches

    options = options or AccuracyOptions()
    options.validate()
    if not artifacts:
        raise OptionError("no artifact given")
    say = progress or (lambda _what, _done, _total: None)
    with contextlib.ExitStack() as stack:
        runners: list[tuple[str, Runner]] = []
        for path in artifacts:
            runner = stack.enter_context(_load(path, options))
            runners.append((str(path), runner))
            if checkpoint is not None:
                check_checkpoint_matches(checkpoint, runner.metadata, path)
        metas = _classifier_metadata(runners)
        class_names = labels_for(metas[0].labels, metas[0].num_classes)
        labelled = read_labelled(Path(data), labels, class_names, options.limit, options.seed)
        rows: list[FormatAccuracy] = []
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, meta in enumerate(metas):
            groups.setdefault(_preprocessing(meta), []).append(i)
        for members in groups.values():
            meta = metas[members[0]]
            group = [runners[i] for i in members]
            label = None
            if reference is not None:
                from runtimes.torch import TorchRunner

                label = PYTORCH if len(groups) == 1 else f"{PYTORCH} ({_describe(meta)})"
                group.insert(0, (label, TorchRunner(reference, threads=options.threads)))
            rows += score_runners(group, labelled, meta, label, options, say)
    unreadable = [str(u) for u in labelled.unreadable]
    for row in rows:
        row.unreadable = unreadable
    return AccuracyResult(str(data), labelled.layout, labelled.source, labelled.found, rows[0].images if rows else 0,
                          labelled.classes, options.batch, options.limit, options.seed,
                          _reference_name(reference, checkpoint), rows, unreadable)


def score_runners(runners: Sequence[tuple[str, Runner]], labelled: LabelledSet, meta: ArtifactMetadata,
                  reference: str | None = None, options: AccuracyOptions | None = None,
                  progress: Progress | None = None) -> list[FormatAccuracy]:
    """Score loaded runners (name, runner) on the same batches of `labelled`, preprocessed as
    `meta` says; each is paired with the runner named `reference` (PyTorch), if given."""
    options = options or AccuracyOptions()
    say = progress or (lambda _what, _done, _total: None)
    scores = [_Scores(name, runner) for name, runner in runners]
    if reference is not None:  # first, so that the rows read from the reference down
        scores.sort(key=lambda s: s.name != reference)
        if scores[0].name != reference:
            raise AccuracyError(f"no runner named {reference!r} to pair the others with")
    truth: list[np.ndarray] = []
    what = ", ".join(Path(s.name).name for s in scores)
    say(what, 0, len(labelled))
    for batch in iter_batches(labelled, meta, options.batch, options.decode_threads):
        for s in scores:
            s.run(batch.images)
        truth.append(batch.labels)
        say(what, int(batch.positions[-1]) + 1, len(labelled))
    if not truth:
        raise AccuracyError(f"none of the {len(labelled)} images of {labelled.root} could be read "
                            f"(e.g. {labelled.unreadable[0] if labelled.unreadable else '?'})")
    y = np.concatenate(truth)
    tops = {s.name: np.concatenate(s.top) for s in scores}
    rows = []
    for s in scores:
        top = tops[s.name]
        row = FormatAccuracy(s.name, s.runner.name, s.runner.precision, len(y), accuracy(hits_at(top, y, 1)),
                             accuracy(hits_at(top, y, 5)), len(y) / s.seconds if s.seconds else float("nan"))
        if reference is not None and s is not scores[0]:
            ref = tops[scores[0].name]
            row.change_from_pytorch = paired_change(hits_at(top, y, 1), hits_at(ref, y, 1))
            row.top5_change_from_pytorch = paired_change(hits_at(top, y, 5), hits_at(ref, y, 5))
            row.agreement_with_pytorch = accuracy(top[:, 0] == ref[:, 0])
        rows.append(row)
    return rows


def _load(path: str | Path, options: AccuracyOptions) -> Runner:
    import runtimes

    return runtimes.load(path, device=options.device, threads=options.threads, precision=options.precision)


def _classifier_metadata(runners: list[tuple[str, Runner]]) -> list[ArtifactMetadata]:
    metas = []
    for name, runner in runners:
        meta = runner.metadata
        if meta is None:
            raise AccuracyError(f"{name}: no glnet-export metadata, so its preprocessing and classes are unknown "
                                "(export it with glnet-export)")
        if meta.task != "classify":
            raise AccuracyError(f"{name} outputs {', '.join(meta.outputs)}, not class logits: accuracy needs a "
                                "classifier (export without --features)")
        metas.append(meta)
    first = metas[0]
    for (name, _runner), meta in zip(runners[1:], metas[1:], strict=True):
        if (meta.num_classes, meta.labels) != (first.num_classes, first.labels):
            raise AccuracyError(f"{name} has {meta.num_classes} classes ({meta.labels or 'unnamed'}), "
                                f"{runners[0][0]} {first.num_classes} ({first.labels or 'unnamed'}): score them apart")
    return metas


def _preprocessing(meta: ArtifactMetadata) -> tuple[object, ...]:
    return (meta.input_size, meta.crop_pct, meta.interpolation, meta.mean, meta.std, meta.color_order)


def _describe(meta: ArtifactMetadata) -> str:
    h, w = meta.input_size
    return f"{h}x{w}, crop {meta.crop_pct}, {meta.interpolation}"


def _reference_name(reference: GLNet | None, checkpoint: Path | None) -> str | None:
    if reference is None:
        return None
    return f"{PYTORCH} {reference.cfg.name}" + (f" from {checkpoint}" if checkpoint is not None else "")
