"""`create_model`: build a variant by name, optionally load a checkpoint, optionally deploy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import get_config
from .model import GLNet


def create_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int = 1000,
    deploy: bool = False,
    use_ema: bool = False,
) -> GLNet:
    """Build GLNet variant `name` in eval mode.

    `checkpoint`: a file in any supported layout (see `glnet.checkpoint`), loaded
    strictly. `deploy=True` returns the export-friendly form. `use_ema` picks the EMA
    weights of a checkpoint that has them.
    """
    model = load_model(name, checkpoint, num_classes=num_classes, use_ema=use_ema).model
    if deploy:
        model.to_deploy()
    return model


@dataclass
class LoadedModel:
    model: GLNet
    checkpoint_sha256: str | None  # None: random weights (no checkpoint)


def load_model(name: str, checkpoint: str | Path | None = None, num_classes: int = 1000,
               use_ema: bool = False) -> LoadedModel:
    """`create_model` that also says which weights it holds (the SHA-256 artifacts record)."""
    model = GLNet(get_config(name), num_classes=num_classes)
    sha256 = None
    if checkpoint is not None:
        from .checkpoint import load_checkpoint

        sha256 = load_checkpoint(model, checkpoint, use_ema=use_ema).sha256
    return LoadedModel(model.eval(), sha256)
