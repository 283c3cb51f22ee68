"""The comparison metrics and pass criteria every verification rests on, on small known arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from glnet_export.verification import DEFAULT_TOLERANCES, check, compare_outputs, tolerance_for

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
