"""Latency statistics from recorded timings (milliseconds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Warm-run statistics in ms; the first (cold) run is kept apart."""

    runs: int
    batch: int
    cold_ms: float
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch * 1000.0 / self.p50 if self.p50 > 0 else float("inf")

    @classmethod
    def from_timings(cls, warm_ms: Sequence[float], cold_ms: float, batch: int = 1) -> LatencyStats:
        if not warm_ms:
            raise ValueError("no warm timings recorded")
        t = np.asarray(warm_ms, dtype=np.float64)
        p50, p90, p95, p99 = np.percentile(t, [50, 90, 95, 99])
        return cls(len(t), batch, float(cold_ms), float(t.mean()), float(t.std()), float(t.min()),
                   float(p50), float(p90), float(p95), float(p99), float(t.max()))
