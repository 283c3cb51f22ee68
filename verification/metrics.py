"""Compare an artifact's outputs with a reference, shape by shape, Polygraphy-style.

Both sides are plain callables `array -> array`, so the same code checks an ONNX file
in onnxruntime against PyTorch, an OpenVINO IR against an ONNX file, and so on. Inputs
are real photographs (preprocessed as the artifact says) plus random normal inputs,
because random inputs alone say nothing about top-1 agreement on natural images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.engine_manifest import Profile
from artifacts.errors import one_line
from artifacts.metadata import ArtifactMetadata
from artifacts.preprocess import preprocess

InferFn = Callable[[np.ndarray], np.ndarray]
MultiInferFn = Callable[[np.ndarray], dict[str, np.ndarray]]  # every output by name (feature artifacts)


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one comparison. `max_rel` is max |a - b| / max |reference|."""

    max_rel: float
    min_cosine: float
    min_top1: float  # fraction of samples whose top-1 class agrees
    judge_random: bool = True  # False: random inputs must run, only photographs are judged

    def describe(self) -> str:
        return f"rel <= {self.max_rel:g}, cosine >= {self.min_cosine:g}, top-1 >= {self.min_top1:.0%}"


# Defaults per precision that ran. fp32 differs from PyTorch only by the order of float
# operations (measured ~1e-6 relative on glnet_4g); reduced precisions are judged mostly
# by whether they still pick the same classes.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-4, min_cosine=0.99999, min_top1=1.0),
    # A TensorRT fp32 engine with TF32 allowed (--tf32): convolutions and matrix products round
    # their inputs to a 10-bit mantissa (relative step 2^-11, so 2^-10 ~ 1e-3 per product) and
    # accumulate in fp32; everything else stays fp32. The mantissa is fp16's, but fp16 also
    # rounds every stored activation and every other op and has fp16's range, and gets 2e-2.
    # glnet_4g has 30 residual blocks of a few products each: errors of ~1e-3 per block add
    # to ~5e-3 as random roundings (sqrt(30) x 1e-3), to 3e-2 only if all had one sign; 1e-2
    # sits between. A 1e-2 error keeps the cosine above 1 - (1e-2)^2 / 2; top-1 may flip at
    # near-ties as in fp16. Estimated, not measured: no TF32 engine has run here (no GPU).
    "tf32": Tolerance(max_rel=1e-2, min_cosine=0.9999, min_top1=0.9),
    "fp16": Tolerance(max_rel=2e-2, min_cosine=0.999, min_top1=0.9),
    "bf16": Tolerance(max_rel=8e-2, min_cosine=0.99, min_top1=0.8),
    # int8 ranges come from calibration images: random normal inputs fall outside them.
    "int8": Tolerance(max_rel=2e-1, min_cosine=0.98, min_top1=0.8, judge_random=False),
}


def tolerance_for(precision: str, **overrides: float | None) -> Tolerance:
    base = DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"])
    values = {k: v for k, v in overrides.items() if v is not None}
    return Tolerance(**{**asdict(base), **values})


@dataclass
class ShapeResult:
    """Metrics of one input shape, over photographs and random inputs together."""

    shape: tuple[int, int, int, int]
    samples: int
    photos: int
    max_abs: float
    max_rel: float
    cosine: float  # the smallest per-sample cosine similarity
    top1: float  # fraction of samples whose top-1 class agrees
    top5: float  # fraction of samples whose top-5 classes are the same set
    passed: bool
    failures: list[str] = field(default_factory=list)
    # Multi-output artifacts: metrics per output; the fields above are the worst of them.
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    # The logits' top-1 agreement and smallest cosine on the photographs alone (None
    # without photographs or logits): the figures that speak for real use.
    photo_top1: float | None = None
    photo_min_cosine: float | None = None
    # The reference's lead of its top-1 logit over its top-2 at each judged sample whose
    # top-1 changed, smallest first: flips at leads of a few hundredths are near-ties (a
    # random-weight model has many), flips at large leads are real errors.
    top1_flip_leads: list[float] = field(default_factory=list)


@dataclass
class VerificationReport:
    reference: str
    candidate: str
    precision: str
    tolerance: Tolerance
    results: list[ShapeResult]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def shapes_to_verify(meta: ArtifactMetadata, batch: int) -> list[tuple[int, int, int, int]]:
    """The export shape, and for dynamic axes at least one more shape per dynamic axis.

    A dynamic-resolution export that is only checked at the traced size can be silently
    wrong elsewhere (FIELD_NOTES trap 3), so `shape` adds a larger and an odd resolution.
    """
    h, w = meta.input_size
    shapes = [(batch, 3, h, w)]
    if meta.dynamic in ("batch", "shape"):
        shapes.append((batch + 2, 3, h, w))
    if meta.dynamic == "shape":
        shapes.append((1, 3, h + 64, w + 64))
        odd_h, odd_w = max(33, h * 3 // 4) | 1, max(45, h * 5 // 4) | 1
        shapes.append((2, 3, odd_h, odd_w))
    return shapes


def shapes_to_verify_engine(meta: ArtifactMetadata, profile: Profile,
                            batch: int = 1) -> list[tuple[int, int, int, int]]:
    """The shapes a TensorRT engine is verified at (`glnet-export tensorrt`, the device check):
    those `shapes_to_verify` asks for that its profile accepts, else the profile's optimum."""
    shapes = [s for s in shapes_to_verify(meta, batch) if profile.accepts(s)]
    opt = profile.opt
    return shapes or [(opt[0], opt[1], opt[2], opt[3])]


def make_batches(
    meta: ArtifactMetadata, shape: tuple[int, int, int, int], photos: Sequence[Path], random: int = 2, seed: int = 0
) -> tuple[list[np.ndarray], int]:
    """Batches of `shape` holding every photograph, then `random` random inputs (at least).

    The last batch is filled up with random inputs so that a fixed-batch artifact can run
    it. Returns the batches and how many samples are photographs.
    """
    b, _, h, w = shape
    rng = np.random.default_rng(seed + h * 7 + w * 13 + b)
    samples = [preprocess(p, meta, size=(h, w))[0] for p in photos]
    n_photos = len(samples)
    while len(samples) < n_photos + random or len(samples) % b:
        samples.append(rng.standard_normal((3, h, w)).astype(np.float32))
    return [np.stack(samples[i : i + b]) for i in range(0, len(samples), b)], n_photos


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, topk: bool = True) -> dict[str, float]:
    """Closeness metrics; top-1/top-5 agreement (NaN when `topk` is off) only mean something for logits."""
    ref = reference.astype(np.float64).reshape(reference.shape[0], -1)
    out = candidate.astype(np.float64).reshape(candidate.shape[0], -1)
    diff = np.abs(ref - out)
    scale = max(float(np.abs(ref).max()), 1e-12)
    dots = (ref * out).sum(1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        per_sample = np.where(norms > 0, dots / np.maximum(norms, 1e-30), 1.0)
    # A sample with NaN or infinite outputs has no cosine; NaN (not 1.0, what the zero-norm
    # rule above would say) keeps that visible in the report.
    per_sample = np.where(np.isfinite(dots) & np.isfinite(norms), per_sample, np.nan)
    cosine = float(np.min(per_sample))
    closeness = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / scale), "cosine": cosine}
    if not topk:
        return {**closeness, "top1": math.nan, "top5": math.nan}
    k = min(5, ref.shape[1])
    top5_ref = np.sort(np.argsort(-ref, axis=1)[:, :k], axis=1)
    top5_out = np.sort(np.argsort(-out, axis=1)[:, :k], axis=1)
    return {
        **closeness,
        "top1": float(np.mean(ref.argmax(1) == out.argmax(1))),
        "top5": float(np.mean(np.all(top5_ref == top5_out, axis=1))),
    }


def top1_leads(reference: np.ndarray) -> np.ndarray:
    """Per sample: how far the top-1 logit of `reference` (samples x classes) leads its top-2."""
    if reference.shape[1] < 2:
        return np.full(reference.shape[0], np.inf)
    top2 = np.sort(reference.astype(np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def top1_flip_leads(reference: np.ndarray, candidate: np.ndarray) -> list[float]:
    """The reference's top-1 lead at each sample whose top-1 class differs in `candidate`, smallest first."""
    ref = reference.reshape(reference.shape[0], -1)
    out = candidate.reshape(candidate.shape[0], -1)
    flipped = ref.argmax(1) != out.argmax(1)
    return sorted(float(v) for v in top1_leads(ref)[flipped])


def describe_flips(leads: Sequence[float], reference: np.ndarray) -> str:
    """'3 of 12 flipped, where the reference's top-1 led its top-2 by 0.02, 0.05, 0.9 (median lead 1.4)'."""
    shown = ", ".join(f"{v:.2g}" for v in leads[:5]) + (", ..." if len(leads) > 5 else "")
    median = float(np.median(top1_leads(reference.reshape(reference.shape[0], -1))))
    return (f"{len(leads)} of {reference.shape[0]} flipped, where the reference's top-1 led its top-2 by "
            f"{shown} (median lead {median:.2g})")


def check(metrics: dict[str, float], tol: Tolerance, flips: str = "") -> list[str]:
    """The tolerance's failed criteria in words; `flips` (describe_flips) explains a top-1 failure."""
    failures = []
    if not math.isfinite(metrics["max_abs"]):
        failures.append("non-finite outputs")
    if not metrics["max_rel"] <= tol.max_rel:
        failures.append(f"max rel error {metrics['max_rel']:.3g} > {tol.max_rel:g}")
    if not metrics["cosine"] >= tol.min_cosine:
        failures.append(f"cosine {metrics['cosine']:.6f} < {tol.min_cosine:g}")
    if not math.isnan(metrics["top1"]) and not metrics["top1"] >= tol.min_top1:  # NaN: not logits
        failures.append(f"top-1 agreement {metrics['top1']:.0%} < {tol.min_top1:.0%}" + (f": {flips}" if flips else ""))
    return failures


def _failed(shape: tuple[int, int, int, int], samples: int, photos: int, reason: str) -> ShapeResult:
    return ShapeResult(shape, samples, photos, math.inf, math.inf, 0.0, 0.0, 0.0, False, [reason])


def verify(
    reference: InferFn,
    candidate: InferFn,
    meta: ArtifactMetadata,
    shapes: Sequence[tuple[int, int, int, int]],
    tolerance: Tolerance,
    photos: Sequence[Path] = (),
    names: tuple[str, str] = ("pytorch", "candidate"),
    on_shape: Callable[[tuple[int, int, int, int]], None] | None = None,
) -> VerificationReport:
    """Run both sides on the same inputs at every shape and judge each against `tolerance`."""
    return verify_outputs(lambda b: {"logits": reference(b)}, lambda b: {"logits": candidate(b)}, meta, shapes,
                          tolerance, photos, names, on_shape)


def verify_outputs(
    reference: MultiInferFn,
    candidate: MultiInferFn,
    meta: ArtifactMetadata,
    shapes: Sequence[tuple[int, int, int, int]],
    tolerance: Tolerance,
    photos: Sequence[Path] = (),
    names: tuple[str, str] = ("pytorch", "candidate"),
    on_shape: Callable[[tuple[int, int, int, int]], None] | None = None,
) -> VerificationReport:
    """`verify` for multi-output artifacts (stage features, slot maps): every output is
    judged on max rel error and cosine; top-1 only where an output is called `logits`."""
    report = VerificationReport(names[0], names[1], meta.precision, tolerance, [])
    if not photos:
        report.notes.append("no photographs available (install scikit-image): random inputs only")
    elif not tolerance.judge_random:
        report.notes.append(f"{meta.precision}: judged on the photographs; random inputs only have to run")
    for shape in shapes:
        if on_shape is not None:
            on_shape(shape)
        batches, n_photos = make_batches(meta, shape, photos)
        ref = _concat([reference(batch) for batch in batches])
        samples = len(next(iter(ref.values())))
        try:
            out = _concat([candidate(batch) for batch in batches])
        except Exception as exc:  # noqa: BLE001 - any runtime failure is a verification failure
            report.results.append(_failed(shape, samples, n_photos, f"failed to run: {one_line(exc, 200)}"))
            continue
        if list(out) != list(ref):
            reason = f"outputs {list(out)} != reference {list(ref)}"
            report.results.append(_failed(shape, samples, n_photos, reason))
            continue
        photo_metrics = {}
        if n_photos and "logits" in ref and out["logits"].shape == ref["logits"].shape:
            photo_metrics = compare_outputs(ref["logits"][:n_photos], out["logits"][:n_photos])
        if not tolerance.judge_random and n_photos:
            # Random inputs lie outside an int8 calibration's ranges; they still run
            # (a crash would show) but only photographs are judged.
            ref = {k: v[:n_photos] for k, v in ref.items()}
            out = {k: v[:n_photos] for k, v in out.items()}
        per_output: dict[str, dict[str, float]] = {}
        failures: list[str] = []
        flip_leads: list[float] = []
        for name, r in ref.items():
            if out[name].shape != r.shape:
                per_output[name] = {"max_abs": math.inf, "max_rel": math.inf, "cosine": 0.0}
                failures.append(f"{name}: shape {out[name].shape} != reference {r.shape}")
                continue
            per_output[name] = compare_outputs(r, out[name], topk=name == "logits")
            flips = ""
            if name == "logits":
                flip_leads = top1_flip_leads(r, out[name])
                flips = describe_flips(flip_leads, r) if flip_leads else ""
            failures += [f"{name}: {f}" for f in check(per_output[name], tolerance, flips)]
        logits = per_output.get("logits", {})
        worst = {
            "max_abs": max(m["max_abs"] for m in per_output.values()),
            "max_rel": max(m["max_rel"] for m in per_output.values()),
            "cosine": min(m["cosine"] for m in per_output.values()),
            "top1": logits.get("top1", math.nan),
            "top5": logits.get("top5", math.nan),
        }
        result = _result(shape, samples, n_photos, worst, failures, per_output)
        if photo_metrics:
            result.photo_top1, result.photo_min_cosine = photo_metrics["top1"], photo_metrics["cosine"]
        result.top1_flip_leads = flip_leads
        report.results.append(result)
    return report


def _result(shape: tuple[int, int, int, int], samples: int, photos: int, metrics: dict[str, float],
            failures: list[str], outputs: dict[str, dict[str, float]] | None = None) -> ShapeResult:
    return ShapeResult(shape, samples, photos, metrics["max_abs"], metrics["max_rel"], metrics["cosine"],
                       metrics["top1"], metrics["top5"], passed=not failures, failures=failures,
                       outputs=outputs or {})


def _concat(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([r[name] for r in results]) for name in results[0]}
