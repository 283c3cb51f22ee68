"""Timing loops that do not flatter: inputs rotate among buffers, cold run kept apart."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def make_inputs(shape: tuple[int, ...], buffers: int = 4, seed: int = 0) -> list[np.ndarray]:
    """Several different input buffers, so the same bytes never sit hot in cache every run."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(buffers)]


def time_runs(fn: Callable[[np.ndarray], object], inputs: Sequence[np.ndarray], runs: int,
              warmup: int = 2) -> tuple[float, list[float]]:
    """The cold (first) run and `runs` warm runs, in ms."""
    start = time.perf_counter()
    fn(inputs[0])
    cold = (time.perf_counter() - start) * 1e3
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    warm = []
    for i in range(runs):
        x = inputs[i % len(inputs)]
        start = time.perf_counter()
        fn(x)
        warm.append((time.perf_counter() - start) * 1e3)
    return cold, warm
