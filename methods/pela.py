"""PELA: low-rank student + feature distillation + regularised weight perturbation.

Loss (paper eq. 7): ``L = L_base + alpha * L_fd + beta * L_rwp``.

- ``L_fd`` (eq. 4): squared error between the student's hidden states and the teacher's,
  identity mapping: the element-wise MSE per hidden state, averaged over them (the paper's
  1/2 is a constant absorbed by alpha). Which states (`fd_targets`): every block's output,
  the final pooled feature (the official Swin code), or a list of block indices.
- ``L_rwp`` (eq. 5-6): for every factorised matrix k, d_k = max_ij |U V^T - W|_ij
  (the entrywise infinity norm) against the perturbation radius epsilon, averaged
  (the official code) or summed (eq. 6) over matrices. Two forms:
    * ``"squared"``: ``(d_k - eps)^2``, the official code's form, whose gradient fades as
      d_k approaches the radius;
    * ``"linear"``: ``d_k - eps``, eq. 6 as printed, whose gradient does not depend on eps.

Every setting comes from the option's `recipe` (`methods.pela_recipes`: "official" or
"paper", per backbone family) unless the option is set explicitly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PelaBenchError
from common.objective import Batch, Objective
from methods.base import Method, frozen_copy, pinned_options, register_method
from methods.factorized import FactorizeOptions, build_factorized
from methods.lowrank import lowrank_modules
from methods.pela_recipes import (DEFAULT_RECIPE, RWP_FORMS, RWP_REDUCTIONS, PelaSettings, check_fd_targets,
                                  check_recipe, recipe_settings)


@dataclass
class PelaOptions(FactorizeOptions):
    # Which recipe's settings apply (`methods.pela_recipes`); each option below left at None takes
    # the recipe's value for the backbone's family.
    recipe: str = DEFAULT_RECIPE
    alpha: float | None = None  # feature-distillation weight
    beta: float | None = None  # weight-perturbation weight
    epsilon: float | None = None  # perturbation radius
    rwp_form: str | None = None  # "squared" or "linear"
    rwp_reduce: str | None = None  # over matrices: "mean" or "sum"
    fd_targets: str | list[int] | None = None  # "blocks", "pooled" or hidden-state indices

    def __post_init__(self) -> None:
        super().__post_init__()
        check_recipe(self.recipe)
        if self.rwp_form is not None and self.rwp_form not in RWP_FORMS:
            raise PelaBenchError(f"pela option rwp_form={self.rwp_form!r}; choose one of {RWP_FORMS}")
        if self.rwp_reduce is not None and self.rwp_reduce not in RWP_REDUCTIONS:
            raise PelaBenchError(f"pela option rwp_reduce={self.rwp_reduce!r}; choose one of {RWP_REDUCTIONS}")
        if self.fd_targets is not None:
            targets = check_fd_targets(self.fd_targets)
            self.fd_targets = list(targets) if isinstance(targets, tuple) else targets
        for name in ("alpha", "beta", "epsilon"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise PelaBenchError(f"pela option {name} must be >= 0, got {getattr(self, name)}")

    def settings(self, info: Any) -> PelaSettings:
        """The recipe's settings for a backbone (`BackboneInfo`), with every option set here taking precedence."""
        base = recipe_settings(self.recipe, info)
        set_here = {k: getattr(self, k) for k in base.__dataclass_fields__ if getattr(self, k) is not None}
        if isinstance(set_here.get("fd_targets"), list):
            set_here["fd_targets"] = tuple(set_here["fd_targets"])
        return replace(base, **set_here)


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


def select_states(states: dict[str, list[torch.Tensor]], indices: tuple[int, ...]) -> dict[str, list[torch.Tensor]]:
    """The hidden states at `indices` of every group (negative indices count from the end)."""
    out = {}
    for group, layers in states.items():
        bad = [i for i in indices if not -len(layers) <= i < len(layers)]
        if bad:
            raise PelaBenchError(f"pela option fd_targets={list(indices)}: group {group!r} has {len(layers)} "
                                 f"hidden states (indices {-len(layers)}..{len(layers) - 1}), not {bad}")
        out[group] = [layers[i] for i in indices]
    return out


@contextmanager
def capture_states(model: nn.Module, targets: Any) -> Iterator[dict[str, list[torch.Tensor]]]:
    """The hidden states `targets` names ("blocks", "pooled" or indices), collected during a forward."""
    with (model.capture_pooled() if targets == "pooled" else model.capture_features()) as groups:
        yield groups
    if isinstance(targets, tuple):
        selected = select_states(groups, targets)
        groups.clear()
        groups.update(selected)


def teacher_states(teacher: nn.Module, batch: Batch, targets: Any) -> dict[str, list[torch.Tensor]]:
    """The teacher's hidden states `targets` names, on one batch (no graph)."""
    with torch.no_grad():
        if targets == "pooled":
            with teacher.capture_pooled() as groups:
                teacher(batch["image"])
            return groups
        states = teacher.features(batch)
        return select_states(states, targets) if isinstance(targets, tuple) else states


def forward_with_features(student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective,
                          targets: Any = "blocks",
                          ) -> tuple[object, dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """The student's output and hidden states, and the teacher's hidden states, on one batch."""
    with capture_states(student, targets) as s_feats:
        output = base.forward(student, batch)
    return output, s_feats, teacher_states(teacher, batch, targets)


def weight_perturbation(student: nn.Module, teacher: nn.Module, epsilon: float, form: str = "squared",
                        reduce: str = "mean") -> torch.Tensor:
    """The penalty on ``max |W_hat - W|`` of the trained factorised layers, averaged or summed over them.

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
    stacked = torch.stack(terms)
    return stacked.sum() if reduce == "sum" else stacked.mean()


@register_method("pela")
@register_method("pela_no_fd", alpha=0.0)
@register_method("pela_no_rwp", beta=0.0)
class Pela(Method):
    options_cls = PelaOptions
    label_skips = ("recipe",)  # a row's recipe is a field and a table column of its own

    def settings(self, info: Any) -> PelaSettings:
        """The loss settings for a backbone (`BackboneInfo`): the recipe's, then the options set."""
        return self.options.settings(info)

    def recipe(self) -> str | None:
        # A variant that fixes its recipe (svd_ft: no term either recipe sets) has none to show.
        return None if self.name and "recipe" in pinned_options(self.name) else self.options.recipe

    def resolved(self, info: Any) -> dict[str, Any]:
        return self.settings(info).as_dict()

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        settings = self.settings(teacher.info)
        if settings.alpha > 0 and settings.fd_targets == "pooled":
            with teacher.capture_pooled():  # refuses a backbone without a pooled feature, before any work
                pass
        return build_factorized(frozen_copy(teacher), self.options, calibration)

    def table_fields(self, info: Any = None) -> dict[str, bool]:
        s = self.settings(info)
        return {"fd": self.trains and s.alpha > 0, "rwp": self.trains and s.beta > 0}

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective) -> dict[str, torch.Tensor]:
        s = self.settings(student.info)
        terms: dict[str, torch.Tensor] = {}
        if s.alpha > 0:
            output, s_feats, t_feats = forward_with_features(student, teacher, batch, base, s.fd_targets)
            fd = feature_distillation(s_feats, t_feats)
        else:
            output = base.forward(student, batch)
            fd = None
        base_loss = base.loss(output, batch)
        total = base_loss
        terms["base"] = base_loss.detach()
        if fd is not None:
            total = total + s.alpha * fd
            terms["fd"] = fd.detach()
        if s.beta > 0:
            rwp = weight_perturbation(student, teacher, s.epsilon, s.rwp_form, s.rwp_reduce)
            total = total + s.beta * rwp
            terms["rwp"] = rwp.detach()
        terms["loss"] = total
        return terms
