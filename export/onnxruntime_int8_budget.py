"""onnxruntime int8 within an accuracy budget: GLNet blocks kept in float, greedily, until the
top-1 drop against the fp32 ONNX on the validation images is within `--max-drop`.

onnxruntime's quantizer has no budget of its own; what it has is `nodes_to_exclude`, which
`export.onnxruntime_int8` fills with whole blocks (`keep_float`). The search:

1. The unconstrained int8 file (the user's `--keep-float` blocks only), on every validation
   image. Within the budget: that is the file, and the search ends.
2. Each block's sensitivity, on a small class-balanced subset (RANKING_IMAGES): the file
   with only that block in int8 and every other block in float, scored by the images whose
   top-1 leaves fp32's, then by the mean KL divergence of its class probabilities from
   fp32's. Only-that-block, rather than all-but-that-block, because it measures a block's
   own error directly against fp32, with nothing else perturbed: on a few dozen images a
   single block's error is resolved well, while "all but one" would read it as the small
   difference between two nearly equal large errors, mostly noise. To first order the
   blocks' errors add, so the block that errs most alone is the one whose float removes
   most. Same cost either way: one quantization per block.
3. The most sensitive blocks go to float one at a time, each setting scored on every
   validation image, until the drop is within the budget. A setting with every block in
   float is not int8: reaching it means no setting meets the budget (BudgetNotMetError).

The source is read, checked and fused once (`export.onnxruntime_int8.prepare_source`) and
the ranges are measured once (quantize_static's calibration cache): neither depends on what
is left out. Running candidate files in onnxruntime is part of this converter's search
(calibration runs onnxruntime too); `runtimes` stays out of export.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from artifacts.backends import import_onnxruntime
from artifacts.calibration import DEFAULT_COUNT, CalibrationSet
from artifacts.labelled import balanced_sample
from artifacts.onnx_blocks import describe_blocks, resolve_blocks
from artifacts.onnx_file import read_onnx, save_onnx, set_metadata
from artifacts.scoring import PairedChange

from .int8_budget import (
    AccuracyBudget,
    BudgetNotMetError,
    ValidationImages,
    budget_check,
    change_of,
    drop_words,
    interleaved_ratio,
    load_validation,
    timing_words,
    top1,
    within,
)
from .onnxruntime_int8 import (
    SETTINGS,
    Int8Settings,
    OrtInt8Result,
    PreparedSource,
    calibration_set,
    output_for,
    prepare_source,
    quantize_prepared,
)

Progress = Callable[[str], None]
RANKING_IMAGES = 64  # validation images each block's sensitivity is scored on
BATCH = 32
CHOOSER = ("greedy over GLNet blocks: each block's sensitivity is the file with only that block in int8 (images "
           "leaving fp32's top-1, then KL divergence from fp32, on {n} images); the most sensitive go to float one "
           "at a time until the drop is within the budget")


class _Session:
    """One ONNX file in onnxruntime's CPU provider: logits for preprocessed images."""

    def __init__(self, path: Path) -> None:
        ort = import_onnxruntime()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def logits(self, images: np.ndarray) -> np.ndarray:
        parts = [self.session.run(None, {self.input: images[i:i + BATCH]})[0] for i in range(0, len(images), BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def one(self, image: np.ndarray) -> Callable[[], object]:
        return lambda: self.session.run(None, {self.input: image})


def _kl(fp32: np.ndarray, int8: np.ndarray) -> float:
    """Mean KL(p_fp32 || p_int8) of the class probabilities: blind to a shift of all logits."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(fp32), log_softmax(int8)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=1)))


def rank_blocks(scores: dict[str, tuple[int, float]]) -> list[str]:
    """Blocks, most sensitive first: (images off fp32's top-1, KL) descending; ties keep order."""
    return sorted(scores, key=lambda b: (-scores[b][0], -scores[b][1]))


def quantize_onnxruntime_int8_within_budget(
        onnx_path: str | Path, output_path: str | Path | None, calib: CalibrationSet | str | Path,
        budget: AccuracyBudget, calib_count: int = DEFAULT_COUNT, glmix_float: bool = True,
        keep_float: Sequence[str] = (), progress: Progress | None = None,
        settings: Int8Settings = SETTINGS) -> OrtInt8Result:
    """`export.onnxruntime_int8.quantize_onnxruntime_int8` held to `budget` (module docstring):
    its result for the file written, whose metadata's `quantization.budget` records how the
    budget was met. BudgetNotMetError (nothing written) when no int8 setting meets it."""
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    source = Path(onnx_path)
    output = output_for(source, output_path)
    prepared = prepare_source(source, settings, blocks=True)  # read, checked and fused once for every candidate
    meta, blocks = prepared.meta, prepared.blocks
    user_kept = list(resolve_blocks(keep_float, blocks)) if keep_float else []
    calib_dir = calib.folder if isinstance(calib, CalibrationSet) else Path(calib)
    say(f"reading the validation images from {budget.data}")
    validation = load_validation(budget, meta, calib_dir)
    calib = calibration_set(calib, meta, calib_count, say)
    with tempfile.TemporaryDirectory(prefix="glnet-export-int8-budget-") as tmp:
        search = _Search(prepared, Path(tmp), calib, validation, glmix_float, user_kept, say)
        chosen, kept, note = search.run(budget, blocks, user_kept)
        best, plain = search.tried[tuple(kept)], search.tried[tuple(user_kept)]
        speed, timing = 1.0, "the unconstrained int8 file itself: nothing more was kept in float"
        if kept != user_kept:
            say("timing it against the unconstrained int8 file")
            image = validation.images[:1]
            speed = interleaved_ratio(_Session(plain.path).one(image), _Session(best.path).one(image))
            timing = timing_words(f"onnxruntime {import_onnxruntime().__version__} (CPU)")
        fp32 = search.fp32_logits
        record = budget_check(budget, chosen, fp32, search.logits[tuple(kept)], search.logits[tuple(user_kept)],
                              validation.labels, CHOOSER.format(n=search.ranked_on) if search.ranked_on else
                              "the unconstrained int8 file met the budget: no search", kept[len(user_kept):],
                              speed=speed, timing=timing)
        quantization = best.metadata.quantization
        assert quantization is not None
        meta = dataclasses.replace(best.metadata, quantization=dataclasses.replace(quantization, budget=record))
        model = read_onnx(best.path)
        set_metadata(model, meta)
        say(f"writing {output}")
        save_onnx(model, output)
    notes = best.notes + ([note] if note else [])
    if validation.unreadable:
        notes.append(f"{len(validation.unreadable)} unreadable validation image(s) skipped, e.g. "
                     f"{validation.unreadable[0]}")
    return dataclasses.replace(best, path=output, metadata=meta, seconds=time.perf_counter() - start, notes=notes)


class _Search:
    """The candidates of one search, each quantized once into its own temporary file."""

    def __init__(self, source: PreparedSource, folder: Path, calib: CalibrationSet, validation: ValidationImages,
                 glmix_float: bool, user_kept: Sequence[str], say: Progress) -> None:
        self.source, self.folder, self.calib, self.validation = source, folder, calib, validation
        self.user_kept = list(user_kept)  # the --keep-float blocks: every candidate keeps them
        self.glmix_float, self.say = glmix_float, say
        self.cache = folder / "calibration.json"  # quantize_static's ranges, measured by the first candidate
        self.tried: dict[tuple[str, ...], OrtInt8Result] = {}
        self.logits: dict[tuple[str, ...], np.ndarray] = {}
        self.fp32_logits = _Session(source.path).logits(validation.images)
        self.ranked_on = 0

    def quantize(self, kept: Sequence[str]) -> OrtInt8Result:
        key = tuple(kept)
        if key not in self.tried:
            path = self.folder / f"candidate_{len(self.tried)}.onnx"
            # The user's blocks and the search's apart: the file's words name each by its option.
            self.tried[key] = quantize_prepared(
                self.source, path, self.calib, glmix_float=self.glmix_float,
                keep_float=[b for b in kept if b in self.user_kept],
                budget_blocks=[b for b in kept if b not in self.user_kept], calibration_cache=self.cache)
        return self.tried[key]

    def score(self, kept: Sequence[str]) -> PairedChange:
        """The candidate's top-1 change from fp32 on every validation image."""
        result = self.quantize(kept)
        logits = self.logits[tuple(kept)] = _Session(result.path).logits(self.validation.images)
        return change_of(logits, self.fp32_logits, self.validation.labels)

    def run(self, budget: AccuracyBudget, blocks: list[str],
            user_kept: list[str]) -> tuple[PairedChange, list[str], str]:
        """(the paired change of the chosen setting, its float blocks, a note)."""
        n = len(self.validation)
        self.say(f"quantizing without a budget and scoring it on {n} validation images")
        change = self.score(user_kept)
        if within(change, budget.max_drop):
            return change, user_kept, ""
        first = change
        candidates = [b for b in blocks if b not in user_kept]
        subset = balanced_sample(self.validation.labels, min(RANKING_IMAGES, n))
        self.ranked_on = len(subset)
        scores: dict[str, tuple[int, float]] = {}
        reference = self.fp32_logits[subset]
        for i, block in enumerate(candidates, 1):
            self.say(f"int8 drops {drop_words(first)} (budget {budget.max_drop * 100:.2f} pp): block sensitivity "
                     f"{i}/{len(candidates)} ({block})")
            result = self.quantize([b for b in blocks if b != block])
            logits = _Session(result.path).logits(self.validation.images[subset])
            scores[block] = (int(np.sum(top1(logits) != top1(reference))), _kl(reference, logits))
        kept = list(user_kept)
        for block in rank_blocks(scores):
            if len(kept) + 1 == len(blocks):
                break  # the next setting would have every block in float: no int8 left
            kept.append(block)
            self.say(f"keeping {describe_blocks(kept)} in float and scoring it on {n} images")
            change = self.score(kept)
            if within(change, budget.max_drop):
                note = (f"--max-drop: unconstrained int8 drops {drop_words(first)} on the {n} validation images; "
                        f"with {describe_blocks(kept)} in float ({len(kept)} of {len(blocks)} blocks), "
                        f"{drop_words(change)}")
                return change, kept, note
        raise BudgetNotMetError(
            f"no int8 setting keeps the top-1 drop within {budget.max_drop * 100:.2f} pp on {n} images of "
            f"{budget.data}: unconstrained int8 drops {drop_words(first)}, and with {len(kept)} of {len(blocks)} "
            f"blocks in float still {drop_words(change)}; nothing was written")
