"""Per-layer ranks under a budget: the paper's uniform ratio, a spectrum-driven allocation, and a
speed-aware one that keeps dense every layer measured slower factorised.

A budget is a fraction of the dense model: of all its parameters (``params``), or of the
multiply-adds of its factorisable linear layers per image (``flops``; attention's own
matmuls and the layers that stay dense do not change, so they are left out). A layer of
shape d_in x d_out at rank r costs ``r (d_in + d_out)`` against ``d_in d_out`` dense (times
its tokens per image for FLOPs), so above the break-even rank it stays dense.

``budget`` chooses each layer's rank, a multiple of `rank_multiple`, from the layer's
singular-value spectrum (of ``W S`` for a data-aware start, where the tail energy is the
output error on the calibration rows): greedily, the step that removes the most relative
tail energy per unit of cost first, until the budget is spent. Relative energy (the
fraction of ``||W S||_F^2`` a rank leaves out) makes layers of different scale comparable.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from common.errors import PelaBenchError
from common.params import count_params
from common.timing import time_calls

ALLOCS = ("uniform", "budget", "speed")


@dataclass(frozen=True)
class LayerPlan:
    """What the allocation knows of one factorisable layer."""

    name: str
    d_in: int
    d_out: int
    tokens: float = 1.0  # rows per image: the FLOPs weight (1 when counting parameters)

    @property
    def dense(self) -> int:
        return self.d_in * self.d_out

    def factorised(self, rank: int) -> int:
        return rank * (self.d_in + self.d_out)

    def cost(self, rank: int | None, unit: str) -> float:
        size = self.dense if rank is None else self.factorised(rank)
        return size * (self.tokens if unit == "flops" else 1.0)

    def ranks(self, multiple: int) -> list[int]:
        """The ranks that make the layer smaller than dense: multiples of `multiple`, below break-even."""
        limit = min(self.d_in, self.d_out)
        return [r for r in range(multiple, limit + 1, multiple) if self.factorised(r) < self.dense]


def tail_energy(spectrum: torch.Tensor) -> torch.Tensor:
    """``tail[r]``: the fraction of the squared spectrum a rank-r truncation leaves out (tail[0] = 1)."""
    energy = spectrum.double().square()
    total = float(energy.sum())
    if total <= 0:
        return torch.zeros(len(energy) + 1, dtype=torch.float64)
    kept = torch.cat([torch.zeros(1, dtype=torch.float64), energy.cumsum(0)])
    return (1.0 - kept / total).clamp_min(0.0)


def singular_values(weight: torch.Tensor, scaling: torch.Tensor | None = None) -> torch.Tensor:
    """All singular values of W (or of ``W S``), from the eigenvalues of the shorter side's Gram matrix."""
    w = weight.detach().double()
    if scaling is not None:
        w = w @ scaling
    if w.shape[0] > w.shape[1]:
        w = w.T
    return torch.linalg.eigvalsh(w @ w.T).flip(0).clamp_min(0).sqrt()


def fixed_params(model: nn.Module, plans: Iterable[LayerPlan]) -> int:
    """The parameters no allocation changes: everything but the factorisable layers' weight matrices."""
    return count_params(model) - sum(p.dense for p in plans)


def uniform_ranks(plans: list[LayerPlan], ratio: float, multiple: int = 1) -> dict[str, int | None]:
    """The paper's rank at one ratio (`methods.lowrank.lowrank_rank`), rounded down to `multiple`; None: dense."""
    from methods.lowrank import lowrank_rank

    out: dict[str, int | None] = {}
    for p in plans:
        rank = lowrank_rank(p.d_in, p.d_out, ratio)
        if multiple > 1:
            rank = max(multiple, rank // multiple * multiple)
        out[p.name] = rank if p.factorised(rank) < p.dense else None
    return out


def total_cost(plans: list[LayerPlan], ranks: dict[str, int | None], unit: str) -> float:
    return sum(p.cost(ranks.get(p.name), unit) for p in plans)


def budget_limit(plans: list[LayerPlan], target: float, unit: str, fixed: int) -> float:
    """What the factorisable layers may cost: ``target`` of the dense model's parameters (less what stays
    as it is) or of the layers' dense FLOPs."""
    if unit == "params":
        return target * (fixed + sum(p.dense for p in plans)) - fixed
    return target * sum(p.cost(None, unit) for p in plans)


def uniform_for_target(plans: list[LayerPlan], target: float, unit: str, fixed: int, multiple: int = 1
                       ) -> tuple[dict[str, int | None], float]:
    """The paper's uniform ratio, found by bisection as the smallest ratio whose model meets the target
    (ranks fall as the ratio grows). Returns the ranks and that ratio."""
    limit = budget_limit(plans, target, unit, fixed)
    lo, hi = 1.0, 2.0
    while total_cost(plans, uniform_ranks(plans, hi, multiple), unit) > limit:
        hi *= 2
        if hi > 1e6:
            raise PelaBenchError(_too_small(target, unit, "even rank 1 everywhere"))
    for _ in range(60):
        mid = (lo + hi) / 2
        if total_cost(plans, uniform_ranks(plans, mid, multiple), unit) > limit:
            lo = mid
        else:
            hi = mid
    return uniform_ranks(plans, hi, multiple), hi


def _too_small(target: float, unit: str, what: str) -> str:
    return (f"a budget of {target:g} of the dense {'parameters' if unit == 'params' else 'FLOPs'} cannot be met: "
            f"{what} costs more; raise the target or lower rank_multiple")


def budget_ranks(plans: list[LayerPlan], spectra: dict[str, torch.Tensor], target: float, unit: str, fixed: int,
                 multiple: int = 8, dense: Iterable[str] = ()) -> dict[str, int | None]:
    """Ranks that leave the least total relative tail energy within the budget (None: dense).

    Every layer starts at its smallest rank (or dense, when even that is not smaller, or when it is
    named in `dense`); then the upgrade (the next rank step, or the jump to dense above the largest
    rank that saves anything) that removes the most tail energy per unit of cost is taken, as long
    as it fits. The tail energy is convex in the rank, so each layer's steps come in order.
    """
    limit = budget_limit(plans, target, unit, fixed)
    forced = set(dense)
    options: dict[str, list[int | None]] = {}
    tails: dict[str, torch.Tensor] = {}
    for p in plans:
        ranks = [] if p.name in forced else p.ranks(multiple)
        options[p.name] = [*ranks, None]
        tails[p.name] = tail_energy(spectra[p.name]) if ranks else torch.zeros(1, dtype=torch.float64)
    step = {p.name: 0 for p in plans}
    chosen = {p.name: options[p.name][0] for p in plans}
    spent = total_cost(plans, chosen, unit)
    if spent > limit:
        smallest = "dense layers and rank " + str(multiple) if forced else f"rank {multiple} in every layer"
        raise PelaBenchError(_too_small(target, unit, smallest))

    def error(name: str, rank: int | None) -> float:
        return 0.0 if rank is None else float(tails[name][min(rank, len(tails[name]) - 1)])

    by_name = {p.name: p for p in plans}
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        i = step[name]
        if i + 1 >= len(options[name]):
            return
        p, now, nxt = by_name[name], options[name][i], options[name][i + 1]
        gain = error(name, now) - error(name, nxt)
        cost = p.cost(nxt, unit) - p.cost(now, unit)
        heapq.heappush(heap, (-gain / max(cost, 1e-12), name))

    for p in plans:
        push(p.name)
    while heap:
        _, name = heapq.heappop(heap)
        p, i = by_name[name], step[name]
        extra = p.cost(options[name][i + 1], unit) - p.cost(options[name][i], unit)
        if spent + extra > limit:
            continue  # this layer's next step does not fit; its later ones cost more still
        spent += extra
        step[name] = i + 1
        chosen[name] = options[name][i + 1]
        push(name)
    return chosen


def time_layer(d_in: int, d_out: int, rank: int | None, rows: int, device: str | torch.device = "cpu",
               repeats: int = 20, warmup: int = 3, dtype: torch.dtype = torch.float32) -> float:
    """Median ms of one forward of a dense (rank None) or factorised d_in -> d_out layer on `rows` rows."""
    from methods.lowrank import LowRankLinear

    gen = torch.Generator().manual_seed(0)
    layer = nn.Linear(d_in, d_out) if rank is None else LowRankLinear(d_in, d_out, rank)
    layer = layer.to(device, dtype).eval()
    x = torch.randn(rows, d_in, generator=gen).to(device, dtype)
    times = time_calls(lambda: layer(x), repeats=repeats, warmup=warmup, device=device)
    return times[len(times) // 2]


def slower_factorised(plans: list[LayerPlan], ranks: dict[str, int | None], batch: int,
                      device: str | torch.device = "cpu",
                      timer: Callable[[int, int, int | None, int], float] | None = None,
                      dtype: torch.dtype = torch.float32) -> set[str]:
    """The layers whose factorised form is measured slower than dense at `batch` images on `device` in
    `dtype` (each distinct shape timed once)."""
    timer = timer or (lambda i, o, r, n: time_layer(i, o, r, n, device, dtype=dtype))
    verdict: dict[tuple[int, int, int, int], bool] = {}
    slow = set()
    for p in plans:
        rank = ranks.get(p.name)
        if rank is None:
            continue
        rows = max(1, math.ceil(batch * p.tokens))
        key = (p.d_in, p.d_out, rank, rows)
        if key not in verdict:
            verdict[key] = timer(p.d_in, p.d_out, rank, rows) > timer(p.d_in, p.d_out, None, rows)
        if verdict[key]:
            slow.add(p.name)
    return slow


def speed_ranks(plans: list[LayerPlan], spectra: dict[str, torch.Tensor], target: float, unit: str, fixed: int,
                multiple: int, batch: int, device: str | torch.device = "cpu",
                timer: Callable[[int, int, int | None, int], float] | None = None, rounds: int = 4,
                dtype: torch.dtype = torch.float32) -> tuple[dict[str, int | None], set[str]]:
    """`budget_ranks`, then every layer measured slower factorised is kept dense and the budget is
    re-spent over the others, until no factorised layer is slower (or `rounds` run out: the layers
    still slow are then kept dense too, and the budget may be exceeded; the row's parameters say by
    how much). Returns the ranks and the layers kept dense for speed."""
    dense: set[str] = set()
    ranks: dict[str, int | None] = {}
    for _ in range(rounds):
        try:
            ranks = budget_ranks(plans, spectra, target, unit, fixed, multiple, dense)
        except PelaBenchError:
            break  # the layers kept dense already spend the budget: keep what was last found fast
        slow = slower_factorised(plans, ranks, batch, device, timer, dtype)
        if not slow:
            return ranks, dense
        dense |= slow
    ranks = {n: (None if n in dense else r) for n, r in (ranks or {p.name: None for p in plans}).items()}
    return ranks, dense
