"""Shared fixtures. Heavy artifacts are built once per session and reused by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# Keep timings and thread pools predictable on the 2-core CI machine.
torch.set_num_threads(2)

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def reference_layout() -> dict[str, dict[str, list[int]]]:
    """The authors' checkpoint layout (copied from shared/reference into tests/data)."""
    return json.loads((DATA / "glnet_checkpoint_layout.json").read_text())
