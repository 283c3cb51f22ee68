"""Scoring a classifier on labelled images: top-k hits, accuracies with their 95% intervals,
and the paired change of one model's accuracy from another's on the same images.

Pure numpy, no runtime: the accuracy command (`verification.accuracy`) and the int8
converters' accuracy budget score with the same functions.

Why these intervals:

- An accuracy is k hits in n images: a binomial proportion. Its interval is Wilson's score
  interval, which keeps its coverage near 95% also at accuracies close to 0 or 1 and for
  small n, where the textbook p +- 1.96 sqrt(p(1 - p)/n) collapses to zero width (at 100%
  it would claim certainty from ten images).
- A change from PyTorch is measured on the same images, so the two accuracies are not
  independent: most images are right (or wrong) in both, and only the discordant ones, b
  (right now, wrong in the reference) and c (the other way round), move the difference
  (b - c) / n, the mean of the per-image differences d_i = hit_i - reference_hit_i.
  Treating the two as independent samples would make the interval far too wide; the plain
  normal interval of the mean of d_i has zero width when b = c = 0 (every fp32 file) and
  undercovers when they are few. Newcombe's hybrid score interval for paired proportions
  (Newcombe 1998, "Improved confidence intervals for the difference between binomial
  proportions based on paired data", Statistics in Medicine 17:2635, method 10) combines
  the Wilson intervals of both accuracies with their estimated correlation; it is the one
  Fagerland, Lydersen and Laake (2014) recommend for paired proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal: two-sided 95%
PAIRED_METHOD = "Newcombe (1998) hybrid score interval for paired proportions (method 10)"


@dataclass(frozen=True)
class Proportion:
    """`hits` of `n`, as a fraction, with its 95% Wilson score interval [low, high]."""

    hits: int
    n: int
    value: float  # NaN when n is 0
    low: float
    high: float


@dataclass(frozen=True)
class PairedChange:
    """Candidate accuracy minus reference accuracy on the same `n` images, with its interval.

    `gained`: images the candidate gets right and the reference wrong; `lost`: the reverse.
    `change` = (gained - lost) / n, the mean of the per-image differences.
    """

    n: int
    gained: int
    lost: int
    change: float
    low: float
    high: float
    method: str = PAIRED_METHOD


def wilson(hits: int, n: int, z: float = Z95) -> Proportion:
    """`hits` of `n` with Wilson's score interval (95% by default)."""
    if n < 0 or not 0 <= hits <= max(n, 0):
        raise ValueError(f"need 0 <= hits <= n, got {hits} of {n}")
    if n == 0:
        return Proportion(0, 0, float("nan"), 0.0, 1.0)
    p = hits / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Exactly 0 or 1 at the ends, not one rounding error inside them.
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return Proportion(hits, n, p, low, high)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """N x min(k, classes) class indices, best first (a tie goes to the lower index)."""
    if logits.ndim != 2:
        raise ValueError(f"expected N x classes scores, got shape {logits.shape}")
    k = min(k, logits.shape[1])
    return np.argsort(-logits.astype(np.float64), axis=1, kind="stable")[:, :k]


def hits_at(top: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the label among the first `k` of `top` (from `top_k`)?"""
    labels = np.asarray(labels)
    if top.shape[0] != labels.shape[0]:
        raise ValueError(f"{top.shape[0]} predictions for {labels.shape[0]} labels")
    return (top[:, :k] == labels[:, None]).any(axis=1)


def accuracy(hits: np.ndarray) -> Proportion:
    """The share of True in a per-image hit array, with its Wilson interval."""
    hits = np.asarray(hits, dtype=bool)
    return wilson(int(hits.sum()), int(hits.size))


def paired_change(candidate: np.ndarray, reference: np.ndarray, z: float = Z95) -> PairedChange:
    """Change of accuracy from `reference` to `candidate`, both per-image hits on the same
    images in the same order; the interval is Newcombe's (see the module's docstring)."""
    cand, ref = np.asarray(candidate, dtype=bool), np.asarray(reference, dtype=bool)
    if cand.shape != ref.shape or cand.ndim != 1:
        raise ValueError(f"paired hits must be two 1-D arrays of one length, got {cand.shape} and {ref.shape}")
    n = int(cand.size)
    both = int(np.sum(cand & ref))
    gained = int(np.sum(cand & ~ref))
    lost = int(np.sum(~cand & ref))
    neither = n - both - gained - lost
    low, high = newcombe_paired(both, gained, lost, neither, z)
    change = (gained - lost) / n if n else float("nan")
    return PairedChange(n, gained, lost, change, low, high)


def newcombe_paired(both: int, gained: int, lost: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """Newcombe's (1998) method 10 interval for p1 - p2 from a paired 2 x 2 table.

    p1 = (both + gained) / n is the candidate's accuracy, p2 = (both + lost) / n the
    reference's. Each gets its Wilson interval; the distances from each estimate to its
    limits are combined as for a sum of correlated errors, with phi the (continuity-
    corrected) correlation of the two hit indicators estimated from the table.
    """
    n = both + gained + lost + neither
    if n == 0:
        return -1.0, 1.0
    c1, c2 = wilson(both + gained, n, z), wilson(both + lost, n, z)
    p1, p2 = c1.value, c2.value
    margins = (both + gained) * (lost + neither) * (both + lost) * (gained + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - gained * lost
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    d = p1 - p2
    down = (p1 - c1.low) ** 2 - 2 * phi * (p1 - c1.low) * (c2.high - p2) + (c2.high - p2) ** 2
    up = (c1.high - p1) ** 2 - 2 * phi * (c1.high - p1) * (p2 - c2.low) + (p2 - c2.low) ** 2
    return max(-1.0, d - math.sqrt(max(down, 0.0))), min(1.0, d + math.sqrt(max(up, 0.0)))
