"""The model family: exact checkpoint layout, sizes, and deploy form == reference form."""

from __future__ import annotations

import copy

import pytest
import torch

import glnet
from glnet.complexity import count_complexity
from glnet.testing import seeded_model

RELEASED = ["glnet_stl", "glnet_4g", "glnet_9g", "glnet_16g"]
ALL = glnet.list_models()

# Shapes for the equivalence check: batch > 1, odd sizes, sizes whose last feature maps
# are smaller than the 8 x 8 slot grid (64 -> 2 x 2, 32 -> 1 x 1), non-square.
SHAPES = [
    (2, 3, 224, 224),
    (1, 3, 97, 131),
    (3, 3, 64, 64),
    (1, 3, 32, 32),
    (2, 3, 33, 45),
    (1, 3, 256, 256),
    (1, 3, 160, 96),
    (1, 3, 288, 352),
]
# The released variants stack the tiny variants' blocks, wider and deeper: the large inputs
# (seconds each for glnet_16g) add nothing to what the tiny variants show at every shape.
SHAPES_FULL_SIZE = [(1, 3, 97, 131), (1, 3, 32, 32), (2, 3, 33, 45), (1, 3, 160, 96)]


@pytest.mark.parametrize("name", RELEASED)
def test_state_dict_layout_equals_reference(name: str, reference_layout: dict) -> None:
    with torch.device("meta"):
        model = glnet.create_model(name)
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert layout == reference_layout[name]
    assert list(layout) == list(reference_layout[name]), "same keys, same order as the release"


def test_paramslot_layout_is_stl_plus_init_slots(reference_layout: dict) -> None:
    with torch.device("meta"):
        model = glnet.create_model("glnet_stl_paramslot")
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    extra = {k: v for k, v in layout.items() if k not in reference_layout["glnet_stl"]}
    assert {k: v for k, v in layout.items() if k not in extra} == reference_layout["glnet_stl"]
    assert extra and all(k.endswith(".init_slots") for k in extra)
    assert all(v[:2] == [1, 64] for v in extra.values())


@pytest.mark.parametrize(("name", "millions"), [("glnet_4g", 27.0), ("glnet_stl", 30.3), ("glnet_9g", 60.0),
                                                ("glnet_16g", 106.1)])
def test_parameter_counts(name: str, millions: float) -> None:
    assert round(count_complexity(name).params / 1e6, 1) == millions


def test_macs_of_glnet_4g_include_attention_projections() -> None:
    # 3.43 G is what FlopCounterMode reports on a CPU, where nn.MultiheadAttention's fused
    # fast path is invisible to it; the meta-device count sees every projection.
    macs = count_complexity("glnet_4g").macs
    assert 4.45e9 < macs < 4.52e9


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(glnet.UnknownModelError, match="glnet_4g"):
        glnet.create_model("glnet_5g")


@pytest.mark.parametrize("name", ALL)
def test_deploy_form_equals_reference_form(name: str) -> None:
    torch.manual_seed(0)
    reference = seeded_model(name, seed=1)
    deploy = copy.deepcopy(reference).to_deploy()
    assert deploy.deploy and not reference.deploy
    for shape in SHAPES if glnet.get_config(name).tiny else SHAPES_FULL_SIZE:
        x = torch.randn(shape) * 2
        with torch.inference_mode():
            ref, out = reference(x), deploy(x)
        rel = ((ref - out).abs().max() / ref.abs().max()).item()
        assert rel < 1e-5, f"{name} at {shape}: relative error {rel:.2e}"


def test_perturbed_weights_are_far_from_init() -> None:
    # What the perturbation is for: every tensor a fresh init leaves at an identity-like
    # value (norm affines, BatchNorm statistics, slot temperatures) must really move.
    fresh = glnet.create_model("glnet_tiny")
    moved = seeded_model("glnet_tiny")
    norms = {name for name, m in fresh.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.BatchNorm2d))}
    checked = 0
    for (key, a), b in zip(fresh.state_dict().items(), moved.state_dict().values(), strict=True):
        owner, _, leaf = key.rpartition(".")
        if (owner in norms and leaf in ("weight", "bias", "running_mean", "running_var")) or leaf in (
                "slot_scale", "gamma", "init_slots"):
            assert (a.float() - b.float()).abs().mean() > 0.05, key
            checked += 1
    assert checked >= 40, checked  # glnet_tiny: its LayerNorms, BatchNorms and 3 slot temperatures


def test_deploy_switch_is_reversible_and_keeps_parameters() -> None:
    model = seeded_model("glnet_tiny", seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        out_before = model(x)
    model.to_deploy()
    assert model.deploy
    model.to_deploy(False)
    assert not model.deploy
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.inference_mode():
        assert torch.equal(model(x), out_before), "back in the reference form, it computes exactly as before"


def test_pooling_matrices_match_adaptive_pooling_exactly() -> None:
    from glnet.layers import pool_8x8

    for h, w in [(56, 56), (14, 14), (7, 7), (3, 5), (1, 1), (97, 131), (9, 8)]:
        x = torch.randn(2, 4, h, w, dtype=torch.float64)
        ref = torch.nn.functional.adaptive_avg_pool2d(x, 8)
        assert torch.allclose(pool_8x8(x), ref, atol=1e-12), (h, w)
