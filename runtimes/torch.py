"""PyTorch eager back-end: the reference every artifact is compared with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import glnet
from glnet.model import GLNet
from glnet_export.metadata import ArtifactMetadata

from .base import Runner, TensorSpec


@contextlib.contextmanager
def inference(threads: int | None) -> Iterator[None]:
    """Inference mode with `threads` intra-op threads, restoring the caller's count after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(previous)


class TorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, model: GLNet | str, checkpoint: str | Path | None = None, threads: int | None = None,
                 use_ema: bool = False) -> None:
        super().__init__()
        if isinstance(model, str):
            model = glnet.create_model(model, checkpoint=checkpoint, use_ema=use_ema)
        self.model = model.eval()
        self.threads = threads
        self.metadata = ArtifactMetadata(model=model.cfg.name, num_classes=model.num_classes,
                                         config=model.cfg.to_dict(), dynamic="shape")
        self.inputs = [TensorSpec("input", ("batch", 3, "height", "width"), "float32")]
        self.outputs = [TensorSpec("logits", ("batch", model.num_classes), "float32")]

    def _infer(self, x: np.ndarray) -> np.ndarray:
        with inference(self.threads):
            return self.model(torch.from_numpy(x)).numpy()
