"""The onnxruntime-only attention fusion (an export pass): same outputs, fewer nodes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.onnx import OnnxExportOptions, export_onnx
from export.passes.attention import fuse_attention
from glnet.testing import seeded_model


@pytest.fixture(scope="module", params=["batch", "shape"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = seeded_model("glnet_tiny", seed=5)
    # Non-zero attention biases: the fused node must carry them.
    for name, param in model.named_parameters():
        if name.endswith(("in_proj_bias", "out_proj.bias")):
            param.data.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("fusion") / f"tiny_{request.param}.onnx"
    export_onnx(model, path, OnnxExportOptions(dynamic=request.param, input_size=(96, 96)))
    return path


def test_every_attention_is_fused(exported: Path) -> None:
    model = onnx.load(exported)
    before = Counter(n.op_type for n in model.graph.node)
    # glnet_tiny: a relation MHA in each of its 3 GLMix blocks, 2 grid MHSA blocks.
    assert fuse_attention(model) == 5
    after = Counter(n.op_type for n in model.graph.node)
    assert after["Attention"] == 5
    assert after["Softmax"] == before["Softmax"] - 5, "the 6 GLMix slot softmaxes stay"
    onnx.checker.check_model(model)


def test_the_fused_file_computes_the_same(exported: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    model = onnx.load(exported)
    assert fuse_attention(model) == 5
    fused_path = tmp_path / "fused.onnx"
    onnx.save(model, fused_path)
    rng = np.random.default_rng(0)
    plain, fused = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (exported, fused_path))
    dynamic = model.graph.input[0].type.tensor_type.shape.dim[2].dim_param != ""
    for shape in [(2, 3, 96, 96)] + ([(1, 3, 131, 97)] if dynamic else []):
        x = rng.standard_normal(shape, dtype=np.float32)
        a, b = plain.run(None, {"input": x})[0], fused.run(None, {"input": x})[0]
        assert float(np.abs(a - b).max() / np.abs(a).max()) < 1e-5
