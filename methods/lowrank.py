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
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal

import torch
from torch import nn

from common.errors import PelaBenchError

if TYPE_CHECKING:
    from methods.calibration import Calibration, LayerStats

SvdSolver = Literal["gram", "exact", "randomized"]
SOLVERS = ("gram", "exact", "randomized")
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
    a third of the cost. "exact" calls `torch.linalg.svd`. "randomized" is
    `randomized_svd`: a few times faster again on paper-size layers, at a truncation
    error a few per cent above the optimum on a random matrix's flat spectrum and
    closer on trained weights (`tools/bench_speed.py --factorise` measures both).
    """
    w = weight.detach()
    out_dtype = w.dtype
    if solver == "exact":
        p, s, qh = torch.linalg.svd(w.float(), full_matrices=False)
        return p[:, :rank].to(out_dtype), s[:rank].to(out_dtype), qh[:rank].to(out_dtype)
    if solver == "randomized":
        p, s, qh = randomized_svd(w, rank)
        return p.to(out_dtype), s.to(out_dtype), qh.to(out_dtype)
    if solver != "gram":
        raise PelaBenchError(f"unknown SVD solver {solver!r}; use one of {', '.join(SOLVERS)}")
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


def _orthonormal(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning `y` by Cholesky-QR (a k x k factorisation and GEMMs, several times
    faster than a Householder QR of a tall matrix), falling back to QR where y^T y is ill-conditioned."""
    gram = (y.T @ y).float()
    eye = torch.eye(len(gram), device=y.device)
    chol, info = torch.linalg.cholesky_ex(gram + 1e-6 * gram.diagonal().mean() * eye)
    if int(info) != 0:
        return torch.linalg.qr(y.float()).Q.to(y.dtype)
    return y @ torch.linalg.solve_triangular(chol, eye, upper=False).T.to(y.dtype)


def fast_gemm_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware multiplies it natively (CUDA, CPUs with AVX512-BF16 or AMX), else float32:
    emulated bfloat16 products are slower than float32 ones."""
    if device.type == "cuda":
        return torch.bfloat16
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return torch.bfloat16 if any(p is not None and p() for p in probes) else torch.float32


@functools.lru_cache(maxsize=8)
def _sketch(m: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The fixed-seed Gaussian test matrix of `randomized_svd`: drawn once per shape, not once per layer."""
    gen = torch.Generator(device=device).manual_seed(0)
    return torch.randn(m, k, generator=gen, device=device, dtype=dtype)


def randomized_svd(weight: torch.Tensor, rank: int, power_iters: int = 1, oversample: int = 8,
                   gemm_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` singular triplets by subspace iteration on the shorter side's Gram matrix.

    The Gram matrix ``A A^T`` is formed once; `power_iters` multiplications by it sharpen a
    random (fixed-seed) subspace of `rank + oversample` columns (each one squares the spectrum's
    decay, so one is two power iterations on A); a Rayleigh-Ritz step picks the top `rank`
    directions P, and the other side is the projection ``P^T A``: the best factorisation within
    the subspace found, with the singular values as the norms of that projection. The three large
    products run in bfloat16 where the hardware has native bfloat16 products (float32 accumulation);
    the small factorisations in float32.
    """
    w = weight.detach().float()
    transposed = w.shape[0] > w.shape[1]
    a = w.T if transposed else w  # m x n, m <= n
    m = a.shape[0]
    k = min(m, rank + oversample)
    dtype = gemm_dtype or fast_gemm_dtype(a.device)
    low = a.to(dtype)
    gram = low @ low.T
    y = gram @ _sketch(m, k, dtype, a.device)
    for _ in range(power_iters):  # an intermediate basis only steers the next product: low precision will do
        y = gram @ _orthonormal(y)
    basis = _orthonormal(y.float())
    evals, evecs = torch.linalg.eigh(basis.T @ (gram @ basis.to(dtype)).float())
    left = basis @ evecs.flip(1)[:, :rank]
    right = (left.T.to(dtype) @ low).float()
    s = right.norm(dim=1)
    right = right / s.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    if transposed:
        return right.T, s, left.T
    return left, s, right


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
        factors = None if linear.weight.device.type == "meta" else lowrank_factors(linear.weight, rank, solver, scaling)
        return cls.from_factors(linear, rank, factors)

    @classmethod
    def from_factors(cls, linear: nn.Linear, rank: int,
                     factors: tuple[torch.Tensor, torch.Tensor] | None) -> "LowRankLinear":
        """The layer with (up, down) = `factors` and the dense layer's bias (None: a meta layer)."""
        w = linear.weight
        # Built on the meta device and then given storage: the default init would be overwritten anyway.
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                    device="meta", dtype=w.dtype).to_empty(device=w.device)
        layer.requires_grad_(w.requires_grad)  # a frozen layer (an EMA copy) stays frozen
        if factors is None:
            return layer
        with torch.no_grad():
            layer.up.weight.copy_(factors[0])
            layer.down.weight.copy_(factors[1])
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


def lowrank_factors(weight: torch.Tensor, rank: int, solver: SvdSolver = "gram",
                    scaling: "InputScaling | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) = ``(P Sigma^1/2, Sigma^1/2 Qh S^-1)`` from the truncated SVD of ``W S`` (S = I without
    a `scaling`), in the weight's dtype."""
    target = weight if scaling is None else (weight.detach().double() @ scaling.forward).float()
    p, s, qh = truncated_svd(target, rank, solver)
    root = s.sqrt()
    down = qh.mul_(root[:, None]) if qh.is_contiguous() else root[:, None] * qh
    if scaling is not None:
        down = (down.double() @ scaling.inverse).to(weight.dtype)
    return p * root[None, :], down


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
    todo: list[tuple[str, nn.Linear, int]] = []
    for name, rank in ranks.items():
        linear = modules.get(name)
        if type(linear) is not nn.Linear:
            raise PelaBenchError(f"factorize: {name!r} is not a dense linear layer of {type(model).__name__}")
        if rank is None or rank * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
            continue
        todo.append((name, linear, rank))
    # Decompositions first, grouped by shape, then the layers: one shape's temporaries after another's
    # reuse the allocator's blocks, where interleaving them with the new layers' storage costs a large
    # model a third more time (DeiT-III-L on 2 cores: `tools/bench_speed.py --factorise`).
    factors: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
    for name, linear, rank in sorted(todo, key=lambda t: (tuple(t[1].weight.shape), t[2])):
        if linear.weight.device.type == "meta":
            factors[name] = None
            continue
        scaling = input_scaling(init, calibration.get(name), damping) if calibration is not None else None
        factors[name] = lowrank_factors(linear.weight, rank, solver, scaling)
    for name, linear, rank in todo:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LowRankLinear.from_factors(linear, rank, factors.pop(name)))
    return model


def lowrank_modules(model: nn.Module) -> dict[str, LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
