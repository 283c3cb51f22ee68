"""The measurement scripts under experiments/ (not packaged): the logic they report with."""

from __future__ import annotations

from experiments.int8 import TARGETS, baseline


def test_int8_ratios_pair_each_candidate_with_the_float_file_it_replaces() -> None:
    """experiments.int8: an IR's ratio is to the bf16 IR run the same way (its @f32 run for @f32
    candidates), an onnxruntime file's to the portable ONNX, and every target names a pair."""
    assert baseline("openvino int8, depthwise float") == "openvino bf16"
    assert baseline("openvino int8, depthwise float @f32") == "openvino bf16 @f32"
    assert baseline("onnxruntime int8") == baseline("tensorrt q/dq in onnxruntime") == "onnxruntime portable"
    assert all(baseline(candidate) == base for candidate, base, _, _ in TARGETS)
