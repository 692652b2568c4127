"""LoRA through the `peft` library: adapters on the linear layers the backbone names.

The targets are the backbone's own `info.adapter_targets` (for the timm ViTs and
Swins: every block's qkv, proj, fc1 and fc2), so the tuner holds no model's names.

The backbone stays dense and frozen; only the adapters (and the classifier, as
in the paper's fine-tuning) train. Parameters are counted as the paper counts
them: frozen backbone plus adapters, so LoRA rows are larger than the dense model.
"""

from __future__ import annotations

from typing import Any

import re
from dataclasses import dataclass

from torch import nn

from common.errors import PelaBenchError
from methods.base import Method, MethodOptions, frozen_copy, refuse_ratio, register_method
from methods.lowrank import matches_any


def adapter_targets(backbone: nn.Module) -> list[str]:
    """Names (inside the backbone) of the linear layers matching `info.adapter_targets`."""
    patterns = backbone.info.adapter_targets
    return [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and matches_any(n, patterns)]


def in_module(param_name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a parameter lies inside a module matched by `patterns` (the module itself or an
    ancestor: Swin's classifier ``head`` holds ``head.fc.weight``)."""
    parts = param_name.split(".")[:-1]
    return bool(patterns) and any(matches_any(".".join(parts[:i]), patterns) for i in range(1, len(parts) + 1))


@dataclass
class LoraOptions(MethodOptions):
    rank: int = 16
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    train_head: bool = True

    def __post_init__(self) -> None:
        refuse_ratio(self, "lora", "it adds adapters to the dense model; drop --ratio or lora")
        if self.rank < 1:
            raise PelaBenchError(f"lora option rank must be >= 1, got {self.rank}")


@register_method("lora")
class Lora(Method):
    takes_ratio = False
    options_cls = LoraOptions

    @staticmethod
    def check_backbone(info) -> None:
        if not info.adapter_targets:
            raise PelaBenchError(f"lora does not apply to {info.name}: the backbone names no adapter targets")

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        from peft import LoraConfig, inject_adapter_in_model  # heavy import, only when used

        opts: LoraOptions = self.options
        student = frozen_copy(teacher)
        targets = adapter_targets(student)
        if not targets:
            raise PelaBenchError(f"lora: no linear layer of {teacher.info.name} matches its adapter targets "
                                 f"{list(teacher.info.adapter_targets)}")
        # Exact names, anchored: peft would otherwise also match any module whose name ends the same way.
        pattern = "^(" + "|".join(re.escape(t) for t in targets) + ")$"
        config = LoraConfig(r=opts.rank, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                            target_modules=pattern, bias="none")
        inject_adapter_in_model(config, student)
        heads = teacher.info.classifier
        # EMA copies (ALBEF's momentum encoders) carry adapters too, so they keep following the
        # whole online model, but never train.
        ema = student.ema_parameters()
        for name, p in student.named_parameters():
            wanted = "lora_" in name or (opts.train_head and in_module(name, heads))
            p.requires_grad_(wanted and name not in ema)
        return student
