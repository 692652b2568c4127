"""PC-LoRA: progressive compression with low-rank adapters and feature distillation.

Every compressed linear computes ``lambda(t) * W x + B (A x) + c``: W is the
frozen pre-trained weight, A and B a LoRA pair, c the bias (initialised from the
pre-trained one). lambda decays from 1 to 0 over the first `decay_fraction` of
training (sine by default; linear and cosine too), so the adapters gradually
take over; once it is 0 the W branch is dropped and every layer becomes the
project's plain `LowRankLinear` with ``down = A``, ``up = B`` and bias c.
Loss: ``task_weight * CE + (1 - task_weight) * feature MSE`` to the teacher's blocks.

Ranks default to PELA's per-layer ranks for the same ratio, so the two methods
end at the same parameter budget; `pc_lora_aggressive` is PC-LoRA's own setting
(rank 32 everywhere, most of ViT-B's parameters removed).
"""

from __future__ import annotations

from typing import Any

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PelaBenchError
from common.objective import Batch, Objective
from methods.base import Method, MethodOptions, frozen_copy, register_method
from methods.lowrank import LowRankLinear, _preset, eligible_linears, lowrank_rank
from methods.pela import feature_distillation, forward_with_features

SCHEDULES = ("sine", "linear", "cosine")


def decay(progress: float, decay_fraction: float, schedule: str = "sine") -> float:
    """lambda at training progress in [0, 1]: 1 at the start, 0 from `decay_fraction` on."""
    p = min(1.0, max(0.0, progress) / decay_fraction) if decay_fraction > 0 else 1.0
    if schedule == "sine":
        return 1.0 - math.sin(p * math.pi / 2)
    if schedule == "linear":
        return 1.0 - p
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(p * math.pi))
    raise PelaBenchError(f"pc_lora option schedule={schedule!r}; choose one of {SCHEDULES}")


class PCLoRALinear(nn.Module):
    """``lambda * W x + B (A x) + c`` with W frozen (a buffer: never trained, dropped at the end)."""

    def __init__(self, linear: nn.Linear, rank: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = linear.in_features, linear.out_features, rank
        w = linear.weight
        self.register_buffer("frozen_weight", w.detach().clone())
        self.lora_a = nn.Linear(self.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_b = nn.Linear(rank, self.out_features, bias=True, device=w.device, dtype=w.dtype)
        self.lam = 1.0
        if w.device.type == "meta":  # shape-only model (parameter and FLOP counting)
            return
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))  # LoRA's init: A random, B zero
        nn.init.zeros_(self.lora_b.weight)
        with torch.no_grad():
            if linear.bias is not None:
                self.lora_b.bias.copy_(linear.bias)
            else:
                self.lora_b.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lora_b(self.lora_a(x))
        if self.lam > 0:
            out = out + self.lam * F.linear(x, self.frozen_weight)
        return out

    def to_lowrank(self) -> LowRankLinear:
        if self.lam > 0:
            raise RuntimeError(f"lambda is still {self.lam}: dropping W now would change the layer")
        layer = LowRankLinear(self.in_features, self.out_features, self.rank, bias=True,
                              device=self.lora_a.weight.device, dtype=self.lora_a.weight.dtype)
        with torch.no_grad():
            layer.down.weight.copy_(self.lora_a.weight)
            layer.up.weight.copy_(self.lora_b.weight)
            layer.up.bias.copy_(self.lora_b.bias)
        return layer

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, lam={self.lam:.3f}"


@dataclass
class PCLoRAOptions(MethodOptions):
    rank: int | None = None  # None: PELA's rank for each layer at `ratio`
    decay_fraction: float = 0.8  # q: lambda reaches 0 after this fraction of training
    schedule: str = "sine"
    task_weight: float = 0.5  # CE weight; the feature-distillation MSE gets the rest

    def __post_init__(self) -> None:
        super().__post_init__()
        decay(0.0, 1.0, self.schedule)  # validates the name
        if not 0 < self.decay_fraction <= 1:
            raise PelaBenchError(f"pc_lora option decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not 0 <= self.task_weight <= 1:
            raise PelaBenchError(f"pc_lora option task_weight must be in [0, 1], got {self.task_weight}")
        if self.rank is not None and self.rank < 1:
            raise PelaBenchError(f"pc_lora option rank must be >= 1, got {self.rank}")


def pc_lora_layers(model: nn.Module) -> dict[str, PCLoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PCLoRALinear)}


@register_method("pc_lora")
@register_method("pc_lora_aggressive", rank=32)
class PCLoRA(Method):
    options_cls = PCLoRAOptions

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        opts: PCLoRAOptions = self.options
        ratio, omit = _preset(teacher, opts.ratio, opts.keep_full_rank)
        student = frozen_copy(teacher)
        for name, linear in eligible_linears(student, omit):
            rank = opts.rank or lowrank_rank(linear.in_features, linear.out_features, ratio)
            rank = min(rank, linear.in_features, linear.out_features)
            parent, _, child = name.rpartition(".")
            setattr(student.get_submodule(parent) if parent else student, child, PCLoRALinear(linear, rank))
        return student

    lam: float = 1.0

    def on_step(self, student: nn.Module, progress: float) -> None:
        self.lam = decay(progress, self.options.decay_fraction, self.options.schedule)
        for layer in pc_lora_layers(student).values():
            layer.lam = self.lam

    def finalize(self, student: nn.Module) -> nn.Module:
        for name, layer in pc_lora_layers(student).items():
            parent, _, child = name.rpartition(".")
            setattr(student.get_submodule(parent) if parent else student, child, layer.to_lowrank())
        return student

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective) -> dict[str, torch.Tensor]:
        w = self.options.task_weight
        output, s_feats, t_feats = forward_with_features(student, teacher, batch, base)
        base_loss = base.loss(output, batch)
        fd = feature_distillation(s_feats, t_feats)
        return {"loss": w * base_loss + (1 - w) * fd, "base": base_loss.detach(), "fd": fd.detach(),
                "lambda": torch.tensor(self.lam)}
