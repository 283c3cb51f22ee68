"""glnet_4g, full size, through the exporter: the one check that needs the real depth and
width (every other export test uses glnet_tiny, which has the same blocks). In a module of
its own so that pytest-xdist runs it beside the other modules, not after them."""

from __future__ import annotations

from pathlib import Path

import pytest

import glnet
from export.onnx import OnnxExportOptions, export_onnx
from glnet.testing import seeded_model
from verification.artifact import VerifyOptions, verify_onnx


@pytest.fixture(scope="module")
def glnet_4g() -> glnet.GLNet:
    return seeded_model("glnet_4g", seed=4)


@pytest.mark.slow
def test_glnet_4g_dynamic_shape_export_is_right_at_every_verified_shape(glnet_4g: glnet.GLNet, tmp_path: Path) -> None:
    # Full size for the mode the traps are about (other resolutions, FIELD_NOTES trap 3);
    # the fixed and dynamic-batch modes are covered on glnet_tiny (test_onnx_export.py), and
    # the README's main command exports glnet_4g with a dynamic batch. One glnet_4g export
    # costs 25-40 s on 2 cores.
    path = tmp_path / "g4_shape.onnx"
    result = export_onnx(glnet_4g, path, OnnxExportOptions(dynamic="shape"))
    assert result.simplified
    report = verify_onnx(path, glnet_4g, VerifyOptions(threads=2, max_photos=4))
    assert report.passed, report.results
    assert len(report.results) == 4
