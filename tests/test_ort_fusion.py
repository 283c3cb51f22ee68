"""The onnxruntime-only attention fusion: same outputs, fewer nodes, standard file on disk."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from export.passes.attention import fuse_attention

import glnet
from export.onnx import OnnxExportOptions, export_onnx
from glnet.testing import perturb_weights_
from runtimes.onnxruntime import OnnxRuntimeRunner


@pytest.fixture(scope="module", params=["batch", "shape"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = perturb_weights_(glnet.create_model("glnet_tiny"), seed=5)
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


def test_fused_session_computes_the_same(exported: Path) -> None:
    rng = np.random.default_rng(0)
    with OnnxRuntimeRunner(exported) as fused, OnnxRuntimeRunner(exported, rewrite=False) as plain:
        assert fused.rewrites.fused_attention == 5 and plain.rewrites.fused_attention == 0
        assert fused.rewrites.folded_residual_convs == 10, "glnet_tiny: 5 pos_conv + 5 mlp.1"
        assert fused.rewrites.fused_layer_norms == 6, "glnet_tiny: norm1 and norm2 of 3 GLMix blocks"
        assert fused.rewrites.regrouped_conv_sums == 3, "glnet_tiny: the residual sum of 3 GLMix blocks"
        shapes = [(2, 3, 96, 96)] + ([(1, 3, 131, 97)] if fused.metadata and fused.metadata.dynamic == "shape" else [])
        for shape in shapes:
            x = rng.standard_normal(shape, dtype=np.float32)
            a, b = plain.infer(x), fused.infer(x)
            assert float(np.abs(a - b).max() / np.abs(a).max()) < 1e-5
    assert not any(n.domain == "com.microsoft" for n in onnx.load(exported).graph.node), "the file stays standard"
