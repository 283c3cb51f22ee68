"""Classification results (shared by the Predictor, the CLI and the serving apps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
