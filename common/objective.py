"""The shape of a base objective, as methods receive it from the task or the backbone.

A method never writes its own task loss: it is handed an `Objective` and combines
``objective.loss(objective.forward(model, batch), batch)`` with its own terms.
Splitting forward from loss lets a method capture hidden states during the very
forward that produces the base loss, and run the teacher through the same
forward without a loss.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch
from torch import nn

from common.errors import PelaBenchError

Batch = Mapping[str, Any]


class Objective(Protocol):
    name: str

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output for a batch (class logits for classification)."""

    def loss(self, output: Any, batch: Batch) -> torch.Tensor:
        """The base loss of an output against the batch's targets."""


class ModelObjective:
    """An objective the model owns: ``model.objective_terms(name, batch)`` gives named loss terms
    (ALBEF: ``itc``, ``itm``, ``mlm``) and the base loss is their sum, as in ALBEF."""

    def __init__(self, name: str) -> None:
        self.name = name

    def forward(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        terms = getattr(model, "objective_terms", None)
        if terms is None:
            raise PelaBenchError(f"{type(model).__name__} has no objective of its own ('{self.name}' needs one)")
        return terms(self.name, batch)

    def loss(self, output: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return torch.stack(list(output.values())).sum()
