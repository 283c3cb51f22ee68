"""What an artifact is checked against, and the comparisons refused because they mean nothing.

Every caller (the commands, Python code) gets the same refusals: a checkpoint that is not
the one the file was exported from, random weights that PyTorch cannot rebuild, a file
without metadata and no model named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from artifacts.metadata import ArtifactMetadata
from glnet.model import GLNet

from .artifact import VerifyError


def check_checkpoint_matches(checkpoint: Path, meta: ArtifactMetadata | None, artifact: str | Path) -> None:
    """Refuse `checkpoint` when the artifact's metadata names another one (by SHA-256)."""
    from glnet.checkpoint import checkpoint_sha256

    if meta is not None and meta.checkpoint_sha256 and checkpoint_sha256(checkpoint) != meta.checkpoint_sha256:
        raise VerifyError(f"{checkpoint} is not the checkpoint {artifact} was exported from "
                          f"(sha256 {meta.checkpoint_sha256[:12]}... expected)")


def pytorch_reference(artifact: str | Path, model: str | None = None, checkpoint: Path | None = None,
                      use_ema: bool = False) -> GLNet:
    """The PyTorch model `artifact` came from, rebuilt from its metadata and `checkpoint`."""
    import glnet
    import runtimes

    with runtimes.load(artifact) as runner:
        meta = runner.metadata
    if meta is None and model is None:
        raise VerifyError(f"{artifact} carries no glnet-export metadata: pass --model and --checkpoint")
    name = model or meta.model  # type: ignore[union-attr]
    num_classes = meta.num_classes if meta else 1000
    if checkpoint is None:
        if meta is not None and meta.random_weights:
            raise VerifyError(f"{artifact} holds random weights that PyTorch cannot rebuild: compare it with the "
                              f"file it was converted from (glnet-export verify {artifact} MODEL.onnx)")
        raise VerifyError("pass --checkpoint (the weights the artifact was exported from) or a REFERENCE artifact")
    check_checkpoint_matches(checkpoint, meta, artifact)
    return glnet.create_model(name, checkpoint=checkpoint, num_classes=num_classes, use_ema=use_ema)


@dataclass
class ConversionReference:
    """What a converted file is verified against: PyTorch, or the file it was converted from."""

    reference: GLNet | Path
    note: str | None = None  # why it is the source file rather than PyTorch


def conversion_reference(source: Path, meta: ArtifactMetadata, checkpoint: Path | None,
                         use_ema: bool = False) -> ConversionReference:
    """PyTorch rebuilt from the source's metadata and `checkpoint`; else the source file itself
    (which was verified against PyTorch when it was exported)."""
    if checkpoint is None:
        why = "random weights cannot be rebuilt" if meta.random_weights else "no --checkpoint given"
        return ConversionReference(source, f"verifying against {source} in onnxruntime ({why}); "
                                           "that file was itself verified against PyTorch when exported")
    import glnet

    check_checkpoint_matches(checkpoint, meta, source)
    model = glnet.create_model(meta.model, checkpoint=checkpoint, num_classes=meta.num_classes, use_ema=use_ema)
    return ConversionReference(model)
