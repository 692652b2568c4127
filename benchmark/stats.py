"""Noise over seeds: a method's mean and spread, and whether it differs from a reference beyond that spread.

The test is Welch's two-sided t-test over seeds (unequal variances; each seed one
independent run of the student), at `ALPHA`. With three seeds it has few degrees of
freedom, so only differences several standard errors wide pass: that is the point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    n: int


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Summary(mean, std, n)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test of equal means; None when a side has under two values.

    Two sides without any spread are equal (p = 1) or apart beyond any noise (p = 0): a method
    that does not train (the uncompressed teacher on classification) scores the same under
    every seed."""
    if len(a) < 2 or len(b) < 2:
        return None
    sa, sb = summarize(a), summarize(b)
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
    diff = sa.mean - sb.mean
    if va + vb == 0:
        return 1.0 if diff == 0 else 0.0
    from scipy import stats

    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    return float(2 * stats.t.sf(abs(t), df))
