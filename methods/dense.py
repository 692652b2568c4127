"""The uncompressed model itself: the reference row of every table."""

from __future__ import annotations

from typing import Any

from torch import nn

from methods.base import Method, register_method


@register_method("dense")
class Dense(Method):
    """The teacher, evaluated as it is."""

    trains = False

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        return teacher

    def describe(self) -> dict[str, Any]:
        # The teacher is the same model at any ratio or full-rank list: a run with --ratio must not
        # fine-tune it again. `ratio: None` keeps the config hash of rows stored before this existed.
        return {"method": self.name, "ratio": None}

    def options_label(self) -> str:
        return ""

    def compression_ratio(self, info: Any) -> float | None:
        return None
