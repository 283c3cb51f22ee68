"""PyTorch eager back-end: the reference every artifact is compared with."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

import glnet
from artifacts.metadata import ArtifactMetadata
from glnet.features import GLNetFeatures
from glnet.model import GLNet

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


class FeaturesTorchRunner(Runner):
    """PyTorch reference of a feature artifact: same outputs, same names, reference form."""

    backend = "pytorch"

    def __init__(self, model: GLNet, slot_blocks: Sequence[str] = (), threads: int | None = None) -> None:
        super().__init__()
        # A copy in the reference form: the caller's model keeps its form and its blocks
        # keep record_slots off.
        self.module = GLNetFeatures(copy.deepcopy(model).eval().to_deploy(False), slot_blocks).eval()
        self.threads = threads
        names = self.module.output_names
        self.metadata = ArtifactMetadata(model=model.cfg.name, num_classes=model.num_classes,
                                         config=model.cfg.to_dict(), dynamic="shape", task="features",
                                         outputs=names, output_name=names[0])
        self.inputs = [TensorSpec("input", ("batch", 3, "height", "width"), "float32")]
        self.outputs = [TensorSpec(n, ("batch", None, None, None), "float32") for n in names]

    def _infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with inference(self.threads):
            results = self.module(torch.from_numpy(x))
        return {spec.name: t.numpy() for spec, t in zip(self.outputs, results, strict=True)}

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self._infer_all(x)[self.outputs[0].name]
