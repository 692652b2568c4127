"""Plain SVD: the factorised model with no distillation and no perturbation term.

``svd`` is the factorised teacher as it is (no training, Table 7's first PELA
row); ``svd_ft`` trains it with the base loss only, which is PELA with both
modules switched off, so it reuses PELA's class rather than a second trainer path.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from methods.base import Method, frozen_copy, register_method
from methods.factorized import FactorizeOptions, build_factorized
from methods.pela import Pela
from methods.pela_recipes import DEFAULT_RECIPE

# With both terms off the two recipes train alike: the recipe is fixed, so a row of each is never built.
register_method("svd_ft", alpha=0.0, beta=0.0, recipe=DEFAULT_RECIPE)(Pela)


@register_method("svd")
class Svd(Method):
    trains = False
    options_cls = FactorizeOptions

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        return build_factorized(frozen_copy(teacher), self.options, calibration)
