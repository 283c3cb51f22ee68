"""int8 within an accuracy budget (`--max-drop X --data DIR`): what both int8 converters share.

The budget is an absolute top-1 drop: fp32 top-1 minus int8 top-1 on the same labelled
validation images, as a fraction (0.01 is one percentage point). Each converter searches
for the int8 file with the least in float whose drop is within it
(`export.onnxruntime_int8_budget`: GLNet blocks kept in float, greedily;
`export.openvino_int8_budget`: NNCF's accuracy-controlled quantization), then records
the measured drop with its paired 95% interval (`artifacts.scoring`), the number of
images, what stayed in float and the speed cost against the int8 file it would have
written without a budget (`artifacts.metadata.BudgetCheck`). No setting within the budget:
`BudgetNotMetError`, and nothing is written.

The validation images must not be calibration images: a drop measured on the images the
ranges came from says nothing about images the model has not seen. The drop is measured
on the images the search chose on, so it is the search's own figure; on other images it
can differ by about its interval (tests/export/test_int8_budget.py checks it on held-out
images).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from artifacts.calibration import image_paths
from artifacts.errors import ExportError, LabelledDataError, OptionError
from artifacts.labelled import LabelledSet, iter_batches, read_labelled
from artifacts.labels import labels_for
from artifacts.metadata import ArtifactMetadata, BudgetCheck
from artifacts.scoring import PairedChange, accuracy, hits_at, paired_change, top_k

# The search runs every candidate on every validation image, held in memory preprocessed
# (2000 images at 224 x 224 are 1.2 GB); a drop on 2000 images has a 95% interval of
# about +-0.5 percentage points, so more images buy little precision for their time.
MAX_IMAGES = 2000
TIMING_ROUNDS = 7  # interleaved rounds of the speed comparison (indicative, not a benchmark)
TIMING_CALLS = 3  # batch-1 calls of each file per round


class BudgetNotMetError(ExportError):
    """No int8 setting keeps the top-1 drop within the budget; nothing was written."""


@dataclass(frozen=True)
class AccuracyBudget:
    """`--max-drop` and the labelled images it is measured on (`--data`, `--labels`, `--limit`,
    read as `glnet-export accuracy` reads them)."""

    max_drop: float
    data: Path
    labels: Path | None = None
    limit: int | None = None
    seed: int = 0  # of the --limit sample

    def validate(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise OptionError(f"--max-drop is a top-1 drop as a fraction (0.01 is one percentage point): "
                              f"give 0 <= X < 1, not {self.max_drop}")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"--limit must be >= 1, not {self.limit}")


@dataclass
class ValidationImages:
    """The labelled images a budget is measured on, preprocessed once for every candidate."""

    images: np.ndarray  # N x 3 x H x W float32, as the artifact's metadata says
    labels: np.ndarray  # N class indices
    source: str  # what was read, in words
    unreadable: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_validation(budget: AccuracyBudget, meta: ArtifactMetadata, calib_dir: Path | None,
                    batch: int = 32) -> ValidationImages:
    """The budget's images, preprocessed as `meta` says; refused in one line when they share
    a file with the calibration folder, or when there are too many to hold."""
    budget.validate()
    labelled = read_labelled(budget.data, budget.labels, labels_for(meta.labels, meta.num_classes), budget.limit,
                             budget.seed)
    if len(labelled) > MAX_IMAGES:
        raise OptionError(f"{len(labelled)} validation images: the int8 search holds them in memory and runs every "
                          f"candidate on each, at most {MAX_IMAGES}: pass --limit N (a class-balanced sample)")
    if calib_dir is not None:
        check_apart(image_paths(calib_dir), labelled)
    batches = list(iter_batches(labelled, meta, batch))
    if not batches:
        raise LabelledDataError(f"none of the {len(labelled)} images of {budget.data} could be read")
    return ValidationImages(np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]),
                            labelled.source, [str(u) for u in labelled.unreadable])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_apart(calibration: Sequence[Path], labelled: LabelledSet) -> None:
    """Refuse validation images that are calibration images: the same file (also through a
    link), or a copy of one (same size, same bytes; only same-size files are read)."""
    by_inode: dict[tuple[int, int], Path] = {}
    by_size: dict[int, list[Path]] = {}
    for path in calibration:
        st = path.stat()
        by_inode[(st.st_dev, st.st_ino)] = path
        by_size.setdefault(st.st_size, []).append(path)
    digests: dict[Path, str] = {}
    shared: list[tuple[Path, Path]] = []
    for path in labelled.paths:
        try:
            st = path.stat()
        except OSError:
            continue  # iter_batches reports it as unreadable
        same = by_inode.get((st.st_dev, st.st_ino))
        if same is None and st.st_size in by_size:
            digest = _digest(path)
            for candidate in by_size[st.st_size]:
                if candidate not in digests:
                    digests[candidate] = _digest(candidate)
            same = next((c for c in by_size[st.st_size] if digests[c] == digest), None)
        if same is not None:
            shared.append((path, same))
    if shared:
        path, same = shared[0]
        raise OptionError(f"--data and --calib share {len(shared)} image(s) (e.g. {path} is {same}): measure the drop "
                          "on images the calibration did not see")


def top1(logits: np.ndarray) -> np.ndarray:
    """The top-1 class of each row (`artifacts.scoring.top_k`: ties to the lower index)."""
    return top_k(logits, 1)[:, 0]


def change_of(int8_logits: np.ndarray, fp32_logits: np.ndarray, labels: np.ndarray) -> PairedChange:
    """int8 top-1 accuracy minus fp32 top-1 accuracy on the same images, paired."""
    return paired_change(hits_at(top_k(int8_logits, 1), labels, 1), hits_at(top_k(fp32_logits, 1), labels, 1))


def within(change: PairedChange, max_drop: float) -> bool:
    """Whether the measured drop is within `max_drop`: counted in images, so that 1 of 100 is
    exactly 0.01 and no rounding of (lost - gained) / n decides it."""
    return change.lost - change.gained <= max_drop * change.n + 1e-9


def drop_words(change: PairedChange) -> str:
    return f"{(change.lost - change.gained) / change.n * 100:+.2f} pp"


def budget_check(budget: AccuracyBudget, change: PairedChange, fp32_logits: np.ndarray, int8_logits: np.ndarray,
                 unconstrained_logits: np.ndarray, labels: np.ndarray, chooser: str, kept_float: Sequence[str] = (),
                 float_ops: Sequence[str] = (), speed: float | None = None, timing: str = "") -> BudgetCheck:
    """The record of a budget met: the drop with its interval (drop = -change, so the interval
    flips), the accuracies, what stayed float and the speed cost."""
    def acc(logits: np.ndarray) -> float:
        return accuracy(hits_at(top_k(logits, 1), labels, 1)).value

    return BudgetCheck(max_drop=budget.max_drop, drop=0.0 - change.change, drop_low=0.0 - change.high,
                       drop_high=0.0 - change.low,
                       images=change.n, fp32_top1=acc(fp32_logits), int8_top1=acc(int8_logits),
                       unconstrained_top1=acc(unconstrained_logits), chooser=chooser, kept_float=tuple(kept_float),
                       float_ops=tuple(float_ops), speed_vs_unconstrained=speed, timing=timing)


def interleaved_ratio(unconstrained: Callable[[], object], candidate: Callable[[], object],
                      rounds: int = TIMING_ROUNDS, calls: int = TIMING_CALLS) -> float:
    """Time of `candidate` / time of `unconstrained`: the median over `rounds` rounds, each
    timing `calls` calls of both, the order alternating, so that load on the machine falls
    on both alike. A few dozen calls: indicative, not a benchmark (`glnet-export bench`)."""
    unconstrained()
    candidate()  # first calls allocate; not timed
    ratios = []
    for r in range(rounds):
        spent: dict[int, float] = {}
        for which, fn in ((0, unconstrained), (1, candidate)) if r % 2 == 0 else ((1, candidate), (0, unconstrained)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            spent[which] = time.perf_counter() - start
        ratios.append(spent[1] / spent[0])
    return statistics.median(ratios)


def timing_words(runtime: str, rounds: int = TIMING_ROUNDS, calls: int = TIMING_CALLS) -> str:
    return (f"{runtime}, batch 1, median of {rounds} interleaved rounds of {calls} calls each, {os.cpu_count()} "
            "CPUs; indicative only")
