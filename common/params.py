"""Parameter counting: the one count that methods, rows and tables all use."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters counted once each (tied or shared tensors once), trainable or not."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
