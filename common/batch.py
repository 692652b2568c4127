"""Batches are dicts of tensors (or nested lists and tuples of them); moving one is shared by the
trainer and by the tasks that build a training step of their own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def move_to(batch: Any, device: torch.device | str) -> Any:
    """A batch with every tensor on `device`, through dicts, lists and tuples."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch
