"""PELA: low-rank student + feature distillation + regularised weight perturbation.

Loss (paper eq. 7): ``L = L_base + alpha * L_fd + beta * L_rwp``.

- ``L_fd`` (eq. 4): squared error between every block's output of student and
  teacher, identity mapping. As in the official code it is the element-wise MSE
  averaged over blocks; the paper's 1/2 is a constant absorbed by alpha.
- ``L_rwp`` (eq. 5-6): for every factorised matrix k, d_k = max_ij |U V^T - W|_ij
  (the entrywise infinity norm) against the perturbation radius epsilon, averaged
  over matrices (the paper sums; averaging keeps beta independent of depth).
  Two forms:
    * ``"squared"`` (default): ``(d_k - eps)^2``, the official code's form. It is
      the default because it is the one that actually uses eps: the linear form's
      gradient does not depend on eps at all, so the radius would be decorative,
      and the squared form's gradient fades as d_k approaches the radius.
    * ``"linear"``: ``d_k - eps``, eq. 6 as printed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PelaBenchError
from common.objective import Batch, Objective
from methods.base import Method, MethodOptions, frozen_copy, register_method
from methods.lowrank import factorize, lowrank_modules

RWP_FORMS = ("squared", "linear")


@dataclass
class PelaOptions(MethodOptions):
    # Feature-distillation weight; None: the backbone's preset (`info.distill_weight`), the
    # official code's choice for that family (DeiT 1.0, ALBEF 0.1).
    alpha: float | None = None
    beta: float = 1.0  # weight-perturbation weight
    epsilon: float = 1e-3  # perturbation radius (official default)
    rwp_form: str = "squared"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rwp_form not in RWP_FORMS:
            raise PelaBenchError(f"pela option rwp_form={self.rwp_form!r}; choose one of {RWP_FORMS}")
        for name in ("alpha", "beta", "epsilon"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise PelaBenchError(f"pela option {name} must be >= 0, got {getattr(self, name)}")


def feature_distillation(student: dict[str, list[torch.Tensor]], teacher: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """Element-wise MSE of every hidden state to the teacher's, averaged over all layers of all groups."""
    if set(student) != set(teacher):
        raise ValueError(f"student feature groups {sorted(student)} vs teacher groups {sorted(teacher)}")
    terms = []
    for group, s_layers in student.items():
        t_layers = teacher[group]
        if len(s_layers) != len(t_layers):
            raise ValueError(f"{group}: {len(s_layers)} student layers vs {len(t_layers)} teacher layers")
        terms += [F.mse_loss(s, t.detach()) for s, t in zip(s_layers, t_layers)]
    return torch.stack(terms).mean()


def forward_with_features(student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective
                          ) -> tuple[object, dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """The student's output and hidden states, and the teacher's hidden states, on one batch."""
    with student.capture_features() as s_feats:
        output = base.forward(student, batch)
    with torch.no_grad():
        t_feats = teacher.features(batch)
    return output, s_feats, t_feats


def weight_perturbation(student: nn.Module, teacher: nn.Module, epsilon: float, form: str = "squared") -> torch.Tensor:
    """Mean over trained factorised layers of the penalty on ``max |W_hat - W|``.

    Layers that do not train (ALBEF's momentum copies follow by EMA) carry no gradient,
    so they are left out rather than diluting the mean.
    """
    terms = []
    for name, layer in lowrank_modules(student).items():
        if not layer.up.weight.requires_grad:
            continue
        original = teacher.get_submodule(name).weight.detach()
        dist = (layer.recovered_weight() - original).abs().amax()
        terms.append((dist - epsilon) ** 2 if form == "squared" else dist - epsilon)
    if not terms:
        raise ValueError("the student has no factorised layer to regularise")
    return torch.stack(terms).mean()


@register_method("pela")
@register_method("pela_no_fd", alpha=0.0)
@register_method("pela_no_rwp", beta=0.0)
class Pela(Method):
    options_cls = PelaOptions

    def build_student(self, teacher: nn.Module) -> nn.Module:
        return factorize(frozen_copy(teacher), ratio=self.options.ratio, omit=self.options.keep_full_rank)

    def table_fields(self) -> dict[str, bool]:
        alpha = self.options.alpha
        return {"fd": self.trains and (alpha is None or alpha > 0), "rwp": self.trains and self.options.beta > 0}

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective) -> dict[str, torch.Tensor]:
        opts: PelaOptions = self.options
        alpha = opts.alpha if opts.alpha is not None else student.info.distill_weight
        terms: dict[str, torch.Tensor] = {}
        if alpha > 0:
            output, s_feats, t_feats = forward_with_features(student, teacher, batch, base)
            fd = feature_distillation(s_feats, t_feats)
        else:
            output = base.forward(student, batch)
            fd = None
        base_loss = base.loss(output, batch)
        total = base_loss
        terms["base"] = base_loss.detach()
        if fd is not None:
            total = total + alpha * fd
            terms["fd"] = fd.detach()
        if opts.beta > 0:
            rwp = weight_perturbation(student, teacher, opts.epsilon, opts.rwp_form)
            total = total + opts.beta * rwp
            terms["rwp"] = rwp.detach()
        terms["loss"] = total
        return terms
