"""Shared fixtures. Heavy artifacts are built once per session and reused by the tests."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import glnet
from artifacts.photos import sample_photo_paths
from glnet.testing import seeded_model

# Keep timings and thread pools predictable: the cores are shared by the pytest-xdist
# workers (2 cores, 2 workers on CI: one thread each), or all ours when run alone.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 2) // _WORKERS)))

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
    return seeded_model("glnet_tiny", seed=11)


@pytest.fixture(autouse=True)
def _seeded_globals() -> None:
    """Every test starts from the same global random state, whatever ran before it (in
    this process or, under pytest-xdist, in another worker). Fixtures that make models
    seed their own generators (`glnet.testing.seeded_model`)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The sample photographs (scikit-image and scikit-learn ship 10).

    scikit-image is a dependency and scikit-learn a dev extra, so fewer photographs is a
    broken install: a failure, not a reason to skip the checks on real photographs."""
    paths = sample_photo_paths()
    assert len(paths) >= 4, f"only {len(paths)} sample photographs found: are scikit-image and scikit-learn installed?"
    return paths
