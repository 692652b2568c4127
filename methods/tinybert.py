"""TinyBERT's distillation on a depth-halved student.

The student keeps every other teacher block (width unchanged), so student block m
learns from teacher block g(m) = 2m (1-based), the layer mapping g(m) = k * m
with k = 2. Training follows TinyBERT's two stages, split by training progress:

1. intermediate-layer distillation (the first `intermediate_fraction`): MSE
   between the student's and the teacher's attention scores (before softmax, as
   TinyBERT fits them) plus MSE between their block outputs;
2. prediction-layer distillation: soft cross-entropy between the student's and
   the teacher's logits at temperature `temperature`.

`halve_depth` is shared with MaskAlign, so both rows compare distillation
objectives at one parameter budget.
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PelaBenchError
from common.objective import Batch, Objective
from methods.base import Method, MethodOptions, frozen_copy, refuse_ratio, register_method


def check_halvable(method: str, info) -> None:
    if not info.halvable_stages:
        raise PelaBenchError(f"{method} does not apply to {info.name}: its student drops blocks, and the backbone "
                             "declares no block stages to thin")


def every_other(counts: list[int]) -> list[list[int]]:
    """Blocks 2, 4, ... of each stage deeper than two blocks (all of them if none is: then its
    two-block stages halve instead); a one-block stage keeps its block."""
    min_depth = 3 if max(counts, default=0) > 2 else 2
    return [list(range(1, n, 2)) if n > 1 and n >= min_depth else list(range(n)) for n in counts]


def halve_depth(teacher: nn.Module) -> nn.Module:
    """A copy of `teacher` keeping blocks 2, 4, ... of each halved stage (`Backbone.thin`).

    A plain ViT is one stage. A hierarchical backbone halves only its stages deeper
    than two blocks (Swin-B's third stage, 18 -> 9), which is what the paper's 58.6 M
    for Swin-B implies; one with no such stage halves its two-block stages instead.
    A vision-language backbone halves its image encoder and each of its text stacks
    (ALBEF: the text-only and the fusion layers; CLIP: its text tower). `student.layer_maps[group][m]` is the
    teacher hidden state that the student's state m of that feature group copies and
    learns from; `student.layer_map`, the teacher block behind each image-encoder block.
    """
    check_halvable("a depth-halved student", teacher.info)
    student = frozen_copy(teacher)
    student.layer_maps, student.layer_map = student.thin(every_other)
    return student


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


@dataclass
class TinyBertOptions(MethodOptions):
    intermediate_fraction: float = 0.5  # share of training spent on stage 1
    temperature: float = 1.0

    def __post_init__(self) -> None:
        refuse_ratio(self, "tinybert", "its student is the teacher at half depth")
        if not 0 <= self.intermediate_fraction <= 1:
            raise PelaBenchError(f"tinybert option intermediate_fraction must be in [0, 1], got {self.intermediate_fraction}")
        if self.temperature <= 0:
            raise PelaBenchError(f"tinybert option temperature must be > 0, got {self.temperature}")


@register_method("tinybert")
class TinyBert(Method):
    takes_ratio = False
    options_cls = TinyBertOptions
    progress: float = 0.0

    @staticmethod
    def check_backbone(info) -> None:
        check_halvable("tinybert", info)
        if not info.attention_scores:
            raise PelaBenchError(f"tinybert does not apply to {info.name}: it distils attention scores, and the "
                                 "backbone declares no readable attention")

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        return halve_depth(teacher)

    def on_step(self, student: nn.Module, progress: float) -> None:
        self.progress = progress

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective) -> dict[str, torch.Tensor]:
        if self.progress < self.options.intermediate_fraction:
            with student.attention_scores() as s_attn, student.capture_features() as s_feats:
                base.forward(student, batch)
            with torch.no_grad(), teacher.attention_scores() as t_attn, teacher.capture_features() as t_feats:
                base.forward(teacher, batch)
            pairs = list(enumerate(student.layer_map))
            attn = torch.stack([F.mse_loss(s_attn[m], t_attn[t]) for m, t in pairs]).mean()
            hidden = torch.stack([F.mse_loss(s_feats[g][m], t_feats[g][t]) for g, layer_map in student.layer_maps.items()
                                  for m, t in enumerate(layer_map)]).mean()
            return {"loss": attn + hidden, "attn": attn.detach(), "hidden": hidden.detach()}
        # Prediction-layer distillation replaces the base objective: TinyBERT's own recipe.
        output = base.forward(student, batch)
        if isinstance(output, dict):
            # A model-owned objective of named terms (ALBEF's ITC + ITM + MLM, already distilled from its
            # momentum model; CLIP's ITC) has no class logits to match: the student trains on it.
            value = base.loss(output, batch)
            return {"loss": value, "base": value.detach()}
        with torch.no_grad():
            t_logits = base.forward(teacher, batch)
        pred = soft_cross_entropy(output, t_logits, self.options.temperature)
        return {"loss": pred, "pred": pred.detach()}
