"""The project's one low-rank layer and the function that puts it into a model.

Paper eq. 1-3: a linear map ``W^T x + b`` (W in R^{d_in x d_out}) becomes
``V (U^T x) + b`` with ``U = U*[:, :r] Sigma^1/2`` and ``V = (Sigma^1/2 V*[:r])^T`` from
the SVD of W, so both factors carry half of the spectrum. The rank follows the
compression ratio kappa: ``r = floor(d_in * d_out / (kappa * (d_in + d_out)))``,
which makes the factorised layer about 1/kappa of the dense one.

PELA, plain SVD and PC-LoRA's end state all use `LowRankLinear` and `factorize`.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Iterable, Literal

import torch
from torch import nn

from common.errors import PelaBenchError

SvdSolver = Literal["gram", "exact"]


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
    def from_linear(cls, linear: nn.Linear, rank: int, solver: SvdSolver = "gram") -> "LowRankLinear":
        """Initialise from a dense layer by truncated SVD with sqrt(Sigma) on both factors."""
        w = linear.weight
        # Built on the meta device and then given storage: the default init would be overwritten anyway.
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                    device="meta", dtype=w.dtype).to_empty(device=w.device)
        layer.requires_grad_(w.requires_grad)  # a frozen layer (an EMA copy) stays frozen
        if w.device.type == "meta":
            return layer
        p, s, qh = truncated_svd(w, rank, solver)
        root = s.sqrt()
        with torch.no_grad():
            layer.up.weight.copy_(p * root[None, :])
            layer.down.weight.copy_(root[:, None] * qh)
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
              solver: SvdSolver = "gram") -> nn.Module:
    """Replace every eligible `nn.Linear` of `model` by a `LowRankLinear`, in place.

    With neither `ratio` nor `omit`, a `Backbone`'s paper preset is used
    (``info.paper_ratio`` and ``info.lowrank_omit``). Layers whose factorised form
    would not be smaller than the dense one are left dense. Returns `model`.
    """
    ratio, omit = _preset(model, ratio, omit)
    for name, linear in eligible_linears(model, omit):
        rank = lowrank_rank(linear.in_features, linear.out_features, ratio)
        if rank * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LowRankLinear.from_linear(linear, rank, solver))
    return model


def lowrank_modules(model: nn.Module) -> dict[str, LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
