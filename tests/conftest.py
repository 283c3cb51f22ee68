"""Shared fixtures. Heavy artifacts are built once per session and reused by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import glnet
from artifacts.photos import sample_photo_paths
from glnet.testing import perturb_weights_

# Keep timings and thread pools predictable on the 2-core CI machine.
torch.set_num_threads(2)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def reference_layout() -> dict[str, dict[str, list[int]]]:
    """The authors' checkpoint layout (copied from shared/reference into tests/data)."""
    return json.loads((DATA / "glnet_checkpoint_layout.json").read_text())


@pytest.fixture(scope="session")
def tiny_model() -> glnet.GLNet:
    """glnet_tiny with its weights moved away from their initial values (`glnet.testing`),
    in eval mode: the model the Predictor, feature and serving tests export and compare
    with. Shared by those modules, so a test must not change it."""
    model = glnet.create_model("glnet_tiny")
    perturb_weights_(model, seed=11)
    return model.eval()


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The sample photographs (scikit-image and scikit-learn ship 10).

    scikit-image is a dependency and scikit-learn a dev extra, so fewer photographs is a
    broken install: a failure, not a reason to skip the checks on real photographs."""
    paths = sample_photo_paths()
    assert len(paths) >= 4, f"only {len(paths)} sample photographs found: are scikit-image and scikit-learn installed?"
    return paths
