"""Accuracy against cost: which models are Pareto-optimal, and which ones compress at all.

Shared by the leaderboard (`benchmark.tables`) and the figures (`reports.figures`), so a
table and a plot never disagree about a point.
"""

from __future__ import annotations

from typing import Sequence

# Measured sizes of the same architecture agree to the last digit; this only absorbs float noise.
_REL_TOL = 1e-6


def _less(a: float, b: float) -> bool:
    return a < b - _REL_TOL * max(abs(a), abs(b))


def pareto_optimal(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[bool]:
    """For (score, cost) points: True where no other point is at least as good on both (a score at
    least as good, a cost at most as high) and strictly better on one. Equal points keep each other."""
    sign = 1.0 if higher_is_better else -1.0
    flags = []
    for i, (score, cost) in enumerate(points):
        dominated = False
        for j, (other_score, other_cost) in enumerate(points):
            if i == j:
                continue
            as_good = sign * other_score >= sign * score and other_cost <= cost
            better = sign * other_score > sign * score or other_cost < cost
            if as_good and better:
                dominated = True
                break
        flags.append(not dominated)
    return flags


def shrinks(params: float | None, gflops: float | None, dense_params: float | None,
            dense_gflops: float | None) -> bool | None:
    """Whether a model is a compression of the uncompressed one: fewer parameters or fewer GFLOPs,
    and more of neither. ToMe (same parameters, fewer FLOPs) shrinks; LoRA (adapters on the frozen
    weights) and the uncompressed model itself do not, nor a model that trades one cost for the
    other. None when a figure is missing."""
    if None in (params, gflops, dense_params, dense_gflops):
        return None
    grows = _less(dense_params, params) or _less(dense_gflops, gflops)
    return not grows and (_less(params, dense_params) or _less(gflops, dense_gflops))


def grows(params: float | None, dense_params: float | None) -> bool:
    """More parameters than the uncompressed model (LoRA's adapters)."""
    return params is not None and dense_params is not None and _less(dense_params, params)
