"""The project's one low-rank layer and the function that puts it into a model.

Paper eq. 1-3: a linear map ``W^T x + b`` (W in R^{d_in x d_out}) becomes
``V (U^T x) + b`` with ``U = U*[:, :r] Sigma^1/2`` and ``V = (Sigma^1/2 V*[:r])^T`` from
the SVD of W, so both factors carry half of the spectrum. The rank follows the
compression ratio kappa: ``r = floor(d_in * d_out / (kappa * (d_in + d_out)))``,
which makes the factorised layer about 1/kappa of the dense one.

PELA, plain SVD and PC-LoRA's end state all use `LowRankLinear` and `factorize`.

Beyond the paper, the start is an option (`init`): ``svd`` truncates W itself; the
data-aware starts truncate ``W S`` for an input scaling S and map the factors back
with S^-1, so what is minimised is the error on the layer's real inputs:

- ``whitened`` (SVD-LLM): S S^T = E[x x^T] + damping, a Cholesky factor (an
  eigen-decomposition where the damped moment is still not positive definite);
  ``||(W - W') S||_F`` is then exactly the layer's output error on the calibration rows;
- ``asvd`` (ASVD): S = diag(E|x|)^0.5, which protects the input channels that carry
  large activations.

Per-layer ranks come from `methods.rank_alloc`; `factorize` takes them as a dict.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

import torch
from torch import nn

from common.errors import PelaBenchError

if TYPE_CHECKING:
    from methods.calibration import Calibration, LayerStats

SvdSolver = Literal["gram", "exact"]
INITS = ("svd", "whitened", "asvd")
ASVD_ALPHA = 0.5  # ASVD's exponent on the mean |x|: its paper's best on LLaMA, and a square root's mildness


def lowrank_rank(d_in: int, d_out: int, ratio: float) -> int:
    """Rank that makes a d_in x d_out layer about 1/ratio of its size (at least 1)."""
    return max(1, math.floor(d_in * d_out / (ratio * (d_in + d_out))))


def truncated_svd(weight: torch.Tensor, rank: int, solver: SvdSolver = "gram") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` singular triplets of a 2-D weight: ``weight ~= P diag(s) Qh``.

    "gram" takes the eigen-decomposition of the smaller side's Gram matrix: the same
    top singular vectors as a full SVD (squaring the spectrum only costs precision
    in singular values below ~1e-3 of the largest, far below any kept rank) at about
    a third of the cost, which is what lets DeiT-III-Large factorise in seconds.
    "exact" calls `torch.linalg.svd`.
    """
    w = weight.detach()
    out_dtype = w.dtype
    if solver == "exact":
        p, s, qh = torch.linalg.svd(w.float(), full_matrices=False)
        return p[:, :rank].to(out_dtype), s[:rank].to(out_dtype), qh[:rank].to(out_dtype)
    if solver != "gram":
        raise PelaBenchError(f"unknown SVD solver {solver!r}; use 'gram' or 'exact'")
    w32 = w.float()
    transposed = w32.shape[0] > w32.shape[1]
    if transposed:  # always decompose the Gram matrix of the shorter side
        w32 = w32.T
    evals, evecs = torch.linalg.eigh(w32 @ w32.T)  # ascending
    evals = evals.flip(0)[:rank].clamp_min(0)
    left = evecs.flip(1)[:, :rank]
    s = evals.sqrt()
    right = (left.T @ w32) / s.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    if transposed:
        p, qh = right.T, left.T
    else:
        p, qh = left, right
    return p.to(out_dtype), s.to(out_dtype), qh.to(out_dtype)


class LowRankLinear(nn.Module):
    """``y = V (U^T x) + b`` as two linear maps: ``down`` holds U^T, ``up`` holds V and b."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank {rank} outside [1, {min(in_features, out_features)}]")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, solver: SvdSolver = "gram",
                    scaling: "InputScaling | None" = None) -> "LowRankLinear":
        """Initialise from a dense layer by truncated SVD with sqrt(Sigma) on both factors: of W itself,
        or of ``W S`` for an input `scaling` S, with S^-1 folded into the down factor."""
        w = linear.weight
        # Built on the meta device and then given storage: the default init would be overwritten anyway.
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                    device="meta", dtype=w.dtype).to_empty(device=w.device)
        layer.requires_grad_(w.requires_grad)  # a frozen layer (an EMA copy) stays frozen
        if w.device.type == "meta":
            return layer
        target = w if scaling is None else (w.double() @ scaling.forward).float()
        p, s, qh = truncated_svd(target, rank, solver)
        root = s.sqrt()
        down = root[:, None] * qh
        if scaling is not None:
            down = (down.double() @ scaling.inverse).to(w.dtype)
        with torch.no_grad():
            layer.up.weight.copy_(p * root[None, :])
            layer.down.weight.copy_(down)
            if linear.bias is not None:
                layer.up.bias.copy_(linear.bias)
        return layer

    def recovered_weight(self) -> torch.Tensor:
        """``W_hat = V U^T`` in `nn.Linear` layout (out x in), differentiable."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


@dataclass(frozen=True)
class InputScaling:
    """S and S^-1 (d_in x d_in, float64) of a data-aware start: the layer's error is ``||(W - W') S||_F``."""

    forward: torch.Tensor
    inverse: torch.Tensor
    method: str  # how S was obtained: "cholesky", "eigh" or "diagonal"


def input_scaling(init: str, stats: "LayerStats", damping: float = 0.01) -> InputScaling | None:
    """The scaling of `init` from one layer's calibration statistics (None for plain ``svd``).

    `damping` is relative: ``damping x mean(diag E[x x^T])`` is added to the diagonal, so that
    an input channel that was constant on the calibration rows does not blow S^-1 up.
    """
    if init == "svd":
        return None
    if init == "asvd":
        scale = stats.mean_abs.double().clamp_min(1e-6 * float(stats.mean_abs.max().clamp_min(1e-12)))
        scale = scale ** ASVD_ALPHA
        return InputScaling(torch.diag(scale), torch.diag(1.0 / scale), "diagonal")
    if init != "whitened":
        raise PelaBenchError(f"unknown low-rank init {init!r}; choose one of {', '.join(INITS)}")
    moment = stats.second_moment.double()
    eye = torch.eye(moment.shape[0], dtype=moment.dtype)
    damped = moment + damping * float(moment.diagonal().mean().clamp_min(1e-12)) * eye
    chol, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        return InputScaling(chol, torch.linalg.solve_triangular(chol, eye, upper=False), "cholesky")
    # Not positive definite even damped (damping 0 and a rank-deficient moment): the eigen-decomposition's
    # square root, with the eigenvalues at the floor that keeps S^-1 finite.
    evals, evecs = torch.linalg.eigh(damped)
    floor = max(float(evals.max()) * 1e-10, 1e-12)
    root = evals.clamp_min(floor).sqrt()
    return InputScaling(evecs * root[None, :], (evecs / root[None, :]).T, "eigh")


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True when a pattern fnmatches the full dotted name or any dotted suffix of it."""
    parts = name.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in suffixes)


def _preset(model: nn.Module, ratio: float | None, omit: Iterable[str] | None) -> tuple[float, tuple[str, ...]]:
    info = getattr(model, "info", None)
    if ratio is None:
        if info is None:
            raise PelaBenchError("factorize() needs a ratio for a model without a paper preset")
        ratio = info.paper_ratio
    if omit is None:
        omit = info.lowrank_omit if info is not None else ()
    if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise PelaBenchError(f"compression ratio must be a number >= 1, got {ratio!r}")
    return float(ratio), tuple(omit)


def eligible_linears(model: nn.Module, omit: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """The dense linear layers a factorising method may replace: not matched by `omit`, and not
    narrower than the backbone's ``info.lowrank_min_out`` outputs (ALBEF's 2-way ITM head)."""
    info = getattr(model, "info", None)
    min_out = getattr(info, "lowrank_min_out", 0)
    omit = tuple(omit)
    return [(name, mod) for name, mod in model.named_modules()
            if type(mod) is nn.Linear and mod.out_features >= min_out and not matches_any(name, omit)]


def factorize(model: nn.Module, ratio: float | None = None, omit: Iterable[str] | None = None,
              solver: SvdSolver = "gram", *, init: str = "svd", calibration: "Calibration | None" = None,
              ranks: dict[str, int | None] | None = None, damping: float = 0.01) -> nn.Module:
    """Replace every eligible `nn.Linear` of `model` by a `LowRankLinear`, in place.

    With neither `ratio` nor `omit`, a `Backbone`'s paper preset is used
    (``info.paper_ratio`` and ``info.lowrank_omit``). Layers whose factorised form
    would not be smaller than the dense one are left dense. `ranks` (from
    `methods.rank_alloc`) replaces the uniform ratio: a rank per layer name, None to
    keep a layer dense. A data-aware `init` needs `calibration`. Returns `model`.
    """
    if init not in INITS:
        raise PelaBenchError(f"unknown low-rank init {init!r}; choose one of {', '.join(INITS)}")
    if init != "svd" and calibration is None:
        raise PelaBenchError(f"low-rank init {init!r} needs calibration statistics of the layers' inputs")
    if ranks is None:
        ratio, omit = _preset(model, ratio, omit)
        ranks = {name: lowrank_rank(linear.in_features, linear.out_features, ratio)
                 for name, linear in eligible_linears(model, omit)}
    modules = dict(model.named_modules())
    for name, rank in ranks.items():
        linear = modules.get(name)
        if type(linear) is not nn.Linear:
            raise PelaBenchError(f"factorize: {name!r} is not a dense linear layer of {type(model).__name__}")
        if rank is None or rank * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
            continue
        scaling = input_scaling(init, calibration.get(name), damping) if calibration is not None else None
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LowRankLinear.from_linear(linear, rank, solver, scaling))
    return model


def lowrank_modules(model: nn.Module) -> dict[str, LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
