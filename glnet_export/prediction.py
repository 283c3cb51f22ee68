"""Top-k classification of image files with any artifact, as its metadata says."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GlnetExportError
from .labels import labels_for
from .preprocess import preprocess


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str
    probability: float


@dataclass
class Prediction:
    image: str
    backend: str
    top: list[ClassScore]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def predict_images(artifact: str | Path, images: Sequence[str | Path], top_k: int = 5, device: str = "cpu",
                   precision: str | None = None) -> list[Prediction]:
    import runtimes

    with runtimes.load(artifact, device=device, precision=precision) as runner:
        meta = runner.metadata
        if meta is None:
            raise GlnetExportError(f"{artifact}: no glnet-export metadata, so its preprocessing is unknown")
        names = labels_for(meta.labels, meta.num_classes)
        results = []
        for image in images:
            probs = softmax(runner.infer(preprocess(image, meta))[0].astype(np.float64))
            order = np.argsort(-probs)[: min(top_k, len(probs))]
            top = [ClassScore(int(i), names[i], float(probs[i])) for i in order]
            results.append(Prediction(str(image), runner.name, top))
    return results
