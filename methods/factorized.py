"""The options every factorising method shares (the start, the rank allocation, the budget) and the one
function that turns them into a factorised student.

    --set init=whitened --set alloc=budget --set params=0.5

makes plain SVD, its fine-tune and every PELA variant start from the whitened truncation with ranks
chosen under half the dense parameters. Defaults are the paper's: plain SVD at the backbone's uniform ratio.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from common.errors import PelaBenchError
from methods.base import MethodOptions
from methods.lowrank import INITS, SOLVERS, _preset, eligible_linears, factorize, input_scaling
from methods.rank_alloc import (ALLOCS, LayerPlan, budget_ranks, fixed_params, singular_values, speed_ranks,
                                uniform_for_target)

log = logging.getLogger("pela_bench")


@dataclass
class FactorizeOptions(MethodOptions):
    init: str = "svd"  # "svd" (the paper's), "whitened" (SVD-LLM) or "asvd" (`methods.lowrank`)
    alloc: str = "uniform"  # "uniform" (the paper's one ratio), "budget" or "speed" (`methods.rank_alloc`)
    params: float | None = None  # target: this fraction of the dense model's parameters
    flops: float | None = None  # target: this fraction of the factorisable layers' dense FLOPs
    rank_multiple: int | None = None  # ranks a multiple of this (None: 8 for budget/speed, 1 for uniform)
    calib_batches: int = 8  # training batches of calibration statistics (a data-aware init, FLOPs, speed)
    damping: float = 0.01  # whitening's relative diagonal damping
    speed_batch: int = 8  # images per forward at which alloc=speed times each layer
    solver: str = "gram"  # the truncated SVD: "gram" (exact top-r), "exact" or "randomized" (`methods.lowrank`)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise PelaBenchError(f"option init={self.init!r}: choose one of {', '.join(INITS)}")
        if self.alloc not in ALLOCS:
            raise PelaBenchError(f"option alloc={self.alloc!r}: choose one of {', '.join(ALLOCS)}")
        for name in ("params", "flops"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value <= 1):
                raise PelaBenchError(f"option {name}={value!r}: a fraction of the dense model in (0, 1]")
        targets = [n for n in ("ratio", "params", "flops") if getattr(self, n) is not None]
        if len(targets) > 1:
            raise PelaBenchError(f"options {' and '.join(targets)} both set the size; give one")
        if self.alloc != "uniform" and self.params is None and self.flops is None:
            raise PelaBenchError(f"option alloc={self.alloc} spends a budget: give params=F or flops=F "
                                 f"(a fraction of the dense model)")
        for name in ("rank_multiple", "calib_batches", "speed_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PelaBenchError(f"option {name}={value!r} must be >= 1")
        if self.solver not in SOLVERS:
            raise PelaBenchError(f"option solver={self.solver!r}: choose one of {', '.join(SOLVERS)}")
        if self.damping < 0:
            raise PelaBenchError(f"option damping={self.damping!r} must be >= 0")

    def multiple(self) -> int:
        if self.rank_multiple is not None:
            return self.rank_multiple
        return 1 if self.alloc == "uniform" else 8

    def needs_calibration(self) -> bool:
        """Whether building the student reads the layers' input statistics (a data-aware start, a FLOPs
        budget that needs tokens per image, or a speed-aware allocation that times them)."""
        return self.init != "svd" or self.flops is not None or self.alloc == "speed"

    def defaults(self) -> dict[str, Any]:
        """This class's own fields at their defaults: left out of a stage hash, so rows from before the
        options existed keep theirs."""
        return {f.name: f.default for f in fields(FactorizeOptions) if f.name not in
                {g.name for g in fields(MethodOptions)}}


def build_factorized(student: nn.Module, options: FactorizeOptions, calibration: Any = None) -> nn.Module:
    """Factorise `student` (a copy of the teacher) in place as `options` say; `calibration` is a
    `methods.calibration.Calibration` where `options.needs_calibration()`."""
    if options.needs_calibration() and calibration is None:
        raise PelaBenchError(f"options init={options.init} alloc={options.alloc}"
                             f"{' flops=' + str(options.flops) if options.flops else ''} need calibration "
                             f"statistics of the teacher's layer inputs (the suite collects them)")
    sized = options.params is not None or options.flops is not None
    if not sized:  # the paper's path: one ratio (or the preset), no allocation
        ratio, omit = _preset(student, options.ratio, options.keep_full_rank)
        ranks = None
        if options.rank_multiple not in (None, 1):
            from methods.rank_alloc import uniform_ranks

            ranks = uniform_ranks(_plans(student, omit, calibration), ratio, options.multiple())
        return factorize(student, ratio=ratio, omit=omit, solver=options.solver, init=options.init,
                         calibration=calibration, ranks=ranks, damping=options.damping)
    _, omit = _preset(student, 1.0, options.keep_full_rank)
    plans = _plans(student, omit, calibration)
    unit, target = ("params", options.params) if options.params is not None else ("flops", options.flops)
    fixed = fixed_params(student, plans)
    if options.alloc == "uniform":
        ranks, ratio = uniform_for_target(plans, target, unit, fixed, options.multiple())
        log.info("uniform ranks at %g of the dense %s: ratio %.3f", target, unit, ratio)
    else:
        spectra = _spectra(student, plans, options, calibration)
        if options.alloc == "budget":
            ranks = budget_ranks(plans, spectra, target, unit, fixed, options.multiple())
        else:
            weight = next(student.parameters())
            ranks, kept = speed_ranks(plans, spectra, target, unit, fixed, options.multiple(),
                                      options.speed_batch, weight.device, dtype=weight.dtype)
            log.info("speed-aware ranks: %d layer(s) kept dense, measured slower factorised at batch %d on %s",
                     len(kept), options.speed_batch, weight.device)
    return factorize(student, solver=options.solver, init=options.init, calibration=calibration, ranks=ranks,
                     damping=options.damping)


def _plans(model: nn.Module, omit: Any, calibration: Any) -> list[LayerPlan]:
    tokens = (lambda n: calibration.get(n).rows_per_sample) if calibration is not None else (lambda n: 1.0)
    return [LayerPlan(name, lin.in_features, lin.out_features, tokens(name))
            for name, lin in eligible_linears(model, omit)]


def _spectra(model: nn.Module, plans: list[LayerPlan], options: FactorizeOptions, calibration: Any) -> dict:
    """Each layer's singular values: of W for plain SVD, of ``W S`` for a data-aware start."""
    out = {}
    for p in plans:
        weight = model.get_submodule(p.name).weight
        scaling = input_scaling(options.init, calibration.get(p.name), options.damping) if calibration else None
        out[p.name] = singular_values(weight, None if scaling is None else scaling.forward)
    return out
