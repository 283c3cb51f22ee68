"""`verification.reference`: the comparisons `verify` refuses are refused to Python callers
too (the CLI only prints them). The artifact is a stand-in runner carrying metadata: what
is checked here is the rule, not a runtime."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from types import TracebackType

import pytest
import torch

import runtimes
from artifacts.metadata import ArtifactMetadata
from glnet.testing import seeded_model
from verification.artifact import VerifyError
from verification.reference import conversion_reference, pytorch_reference

RANDOM = ArtifactMetadata(model="glnet_tiny", num_classes=1000, random_weights=True)


class _Runner:
    def __init__(self, metadata: ArtifactMetadata | None) -> None:
        self.metadata = metadata

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass


def _artifact(monkeypatch: pytest.MonkeyPatch, metadata: ArtifactMetadata | None) -> Path:
    monkeypatch.setattr(runtimes, "load", lambda path, **_: _Runner(metadata))
    return Path("model.onnx")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pth"
    torch.save({"model": seeded_model("glnet_tiny", seed=2).state_dict()}, path)
    return path


def test_random_weights_cannot_be_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = _artifact(monkeypatch, RANDOM)
    with pytest.raises(VerifyError, match="holds random weights that PyTorch cannot rebuild.*verify model.onnx"):
        pytorch_reference(artifact)


def test_a_file_without_metadata_needs_the_model_named(monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = _artifact(monkeypatch, None)
    with pytest.raises(VerifyError, match="carries no glnet-export metadata: pass --model"):
        pytorch_reference(artifact)


def test_another_checkpoint_than_the_exported_one_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                             checkpoint: Path) -> None:
    exported_from = dataclasses.replace(RANDOM, random_weights=False, checkpoint_sha256="ab" * 32)
    artifact = _artifact(monkeypatch, exported_from)
    with pytest.raises(VerifyError, match=r"is not the checkpoint model.onnx was exported from \(sha256 abababab"):
        pytorch_reference(artifact, checkpoint=checkpoint)
    with pytest.raises(VerifyError, match="is not the checkpoint"):
        conversion_reference(artifact, exported_from, checkpoint)


def test_the_right_checkpoint_rebuilds_the_model(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    artifact = _artifact(monkeypatch, dataclasses.replace(RANDOM, random_weights=False, checkpoint_sha256=sha))
    model = pytorch_reference(artifact, checkpoint=checkpoint)
    expected = seeded_model("glnet_tiny", seed=2).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_without_a_checkpoint_a_conversion_is_checked_against_its_source() -> None:
    chosen = conversion_reference(Path("model.onnx"), RANDOM, None)
    assert chosen.reference == Path("model.onnx")
    assert chosen.note is not None and "random weights cannot be rebuilt" in chosen.note
