"""The comparison metrics and pass criteria every verification rests on, on small known arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from artifacts.engine_manifest import Profile
from artifacts.metadata import ArtifactMetadata
from verification.metrics import (
    DEFAULT_TOLERANCES,
    check,
    compare_outputs,
    describe_flips,
    shapes_to_verify,
    shapes_to_verify_engine,
    tolerance_for,
    top1_flip_leads,
    verify,
)

FP32 = DEFAULT_TOLERANCES["fp32"]


def _logits() -> np.ndarray:
    return np.array([[5.0, 1.0, 0.5, 0.2, 0.1, 0.0, -1.0], [0.0, 4.0, 3.9, 1.0, 0.0, -2.0, -3.0]])


def test_identical_outputs_pass_with_exact_metrics() -> None:
    ref = _logits()
    metrics = compare_outputs(ref, ref.copy())
    assert metrics == {"max_abs": 0.0, "max_rel": 0.0, "cosine": pytest.approx(1.0), "top1": 1.0, "top5": 1.0}
    assert check(metrics, FP32) == []


def test_a_top1_flip_is_counted_and_fails_fp32() -> None:
    ref = _logits()
    out = ref.copy()
    out[1, 1], out[1, 2] = 3.9, 4.0  # the second sample's near-tie flips
    metrics = compare_outputs(ref, out)
    assert metrics["top1"] == 0.5 and metrics["top5"] == 1.0, "same top-5 set, other order"
    assert metrics["max_abs"] == pytest.approx(0.1) and metrics["max_rel"] == pytest.approx(0.1 / 5.0)
    failures = check(metrics, FP32)
    assert any(f.startswith("top-1 agreement 50%") for f in failures) and any("max rel error" in f for f in failures)
    assert check(metrics, tolerance_for("fp32", max_rel=0.05, min_cosine=0.99, min_top1=0.5)) == []


def test_a_top1_failure_says_how_narrow_the_flipped_leads_were() -> None:
    ref = _logits()  # leads: 4.0 (5.0 over 1.0) and 0.1 (4.0 over 3.9)
    out = ref.copy()
    out[1, 1], out[1, 2] = 3.9, 4.0
    leads = top1_flip_leads(ref, out)
    assert leads == [pytest.approx(0.1)], "only the second sample flipped; its lead was 0.1"
    assert top1_flip_leads(ref, ref) == []
    text = describe_flips(leads, ref)
    assert text == "1 of 2 flipped, where the reference's top-1 led its top-2 by 0.1 (median lead 2)"
    failure = next(f for f in check(compare_outputs(ref, out), FP32, text) if f.startswith("top-1"))
    assert failure == f"top-1 agreement 50% < 100%: {text}"


def test_verify_records_the_flipped_leads_per_shape() -> None:
    meta = ArtifactMetadata(model="glnet_tiny", num_classes=4, input_size=(32, 32), dynamic="none")
    classes = np.arange(4, dtype=np.float32)

    def reference(batch: np.ndarray) -> np.ndarray:
        return np.tile(classes, (len(batch), 1))  # every sample: class 3 leads class 2 by 1.0

    def candidate(batch: np.ndarray) -> np.ndarray:
        out = reference(batch)
        out[0, 2] = 3.5  # the first sample of each batch now picks class 2
        return out

    report = verify(reference, candidate, meta, [(2, 3, 32, 32)], FP32)
    (result,) = report.results
    assert result.samples == 2 and result.top1 == 0.5
    assert result.top1_flip_leads == [pytest.approx(1.0)]
    assert any("top-1 agreement 50% < 100%: 1 of 2 flipped" in f for f in result.failures)
    same = verify(reference, reference, meta, [(2, 3, 32, 32)], FP32).results[0]
    assert same.passed and same.top1_flip_leads == []


def test_cosine_is_the_worst_sample() -> None:
    ref = _logits()
    out = ref.copy()
    out[0] = -ref[0]  # opposite direction: cosine -1 for that sample
    metrics = compare_outputs(ref, out)
    assert metrics["cosine"] == pytest.approx(-1.0)
    assert any(f.startswith("cosine -1.000000 <") for f in check(metrics, FP32))


def test_non_finite_outputs_fail_whatever_the_tolerance() -> None:
    out = _logits()
    out[0, 3] = np.nan
    metrics = compare_outputs(_logits(), out)
    assert math.isnan(metrics["cosine"]), "a NaN sample has no cosine (it used to read as 1.0)"
    loose = tolerance_for("int8", max_rel=1e9, min_cosine=-1.0, min_top1=0.0)
    assert "non-finite outputs" in check(metrics, loose)
    out[0, 3] = np.inf
    assert "non-finite outputs" in check(compare_outputs(_logits(), out), loose)


def test_feature_maps_are_not_judged_by_top1() -> None:
    ref = np.random.default_rng(0).standard_normal((2, 8, 4, 4))
    metrics = compare_outputs(ref, ref + 1e-7, topk=False)
    assert math.isnan(metrics["top1"]) and math.isnan(metrics["top5"])
    assert check(metrics, FP32) == []


def test_reduced_precisions_have_looser_defaults_and_overrides_win() -> None:
    assert DEFAULT_TOLERANCES["int8"].max_rel > DEFAULT_TOLERANCES["fp16"].max_rel > FP32.max_rel
    assert not DEFAULT_TOLERANCES["int8"].judge_random, "int8 calibrates on photographs: random inputs only run"
    tol = tolerance_for("bf16", min_top1=0.99)
    assert tol.min_top1 == 0.99 and tol.max_rel == DEFAULT_TOLERANCES["bf16"].max_rel


def test_an_engine_is_verified_at_the_shapes_its_profile_accepts() -> None:
    """One filter for `glnet-export tensorrt` and experiments.device_check."""
    meta = ArtifactMetadata("glnet_tiny", 10, input_size=(224, 224), dynamic="shape")
    wide = Profile("input", (1, 3, 32, 32), (1, 3, 224, 224), (8, 3, 512, 512))
    assert shapes_to_verify_engine(meta, wide) == shapes_to_verify(meta, 1)  # the ONNX checks, all accepted
    batch_only = Profile("input", (1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224))
    assert shapes_to_verify_engine(meta, batch_only) == [(1, 3, 224, 224), (3, 3, 224, 224)]
    static = Profile("input", (2, 3, 96, 96), (2, 3, 96, 96), (2, 3, 96, 96))  # accepts none of them
    assert shapes_to_verify_engine(meta, static) == [(2, 3, 96, 96)] and not static.accepts((2, 3, 96))
