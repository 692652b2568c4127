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

Batch = Mapping[str, Any]


class Objective(Protocol):
    name: str

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's output for a batch (class logits for classification)."""

    def loss(self, output: Any, batch: Batch) -> torch.Tensor:
        """The base loss of an output against the batch's targets."""
