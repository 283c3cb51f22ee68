"""Small functions the test modules share (importable: tests/ is on sys.path via conftest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

import glnet
from glnet.testing import seeded_model

# The model most tests export where the model and its size are not the point: glnet_tiny with
# seed 3's weights, at 64 x 64. The session's trace cache (conftest
# `_one_trace_per_model_and_options`) keys a trace by the weights' fingerprint and the export
# options, so every module that exports these weights with the same options shares one trace
# (conftest's `tiny_dynamic_onnx` is one of them). Written here once: a module that drifted
# to another seed or size would still pass, only trace again on its own and cost CI time.
TINY_SEED = 3
TINY_SIZE = 64


def shared_tiny() -> glnet.GLNet:
    """glnet_tiny with seed `TINY_SEED`'s weights (`glnet.testing.seeded_model`: the same
    whatever ran before), in eval mode: the weights whose traces the session shares."""
    return seeded_model("glnet_tiny", seed=TINY_SEED)


def torch_logits(model: glnet.GLNet, x: np.ndarray) -> np.ndarray:
    """The PyTorch model's output for a numpy batch, as numpy."""
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def rel_error(reference: np.ndarray, other: np.ndarray) -> float:
    """max |reference - other| / max |reference|: the relative error verification reports."""
    return float(np.abs(reference - other).max() / np.abs(reference).max())


def copy_of(path: Path, folder: Path) -> Path:
    """`path` copied into `folder` (created), under the same name: a session's shared file
    that a module converts, so that what converters write beside it stays the module's."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, folder / path.name))


def reference_form(self: glnet.GLNet, enabled: bool = True) -> glnet.GLNet:
    """A stand-in for `GLNet.to_deploy` that keeps the reference form: monkeypatched in, an
    export traces the form that is silently wrong at other sizes (FIELD_NOTES trap 3). A
    module-level function, so the session's trace cache shares its trace across workers."""
    return self
