"""MaskAlign: align a masked student's features with the teacher's full-image features.

The student (the same depth-halved copy as TinyBERT's) sees only the visible
patches: `mask_ratio` of them are hidden, chosen by attentive masking, i.e. the
patches the teacher's class token attends to least (last block, heads averaged)
are the ones masked. A dynamic alignment module maps the student's block outputs
onto the teacher's last `depth(student)` block outputs: one linear adapter per
student block and, per teacher layer, learnable softmax weights over the adapted
student blocks. The loss is smooth-L1 between the aligned features and the
teacher's layer-normalised features at the visible positions. As every row of
the suite is evaluated right after pre-training, the student also keeps the
base classification loss on the full image (PELA's L_base); `base_weight=0`
gives MaskAlign's objective alone.

A backbone whose masking is "mask_token" (Swin: shifted windows need the full
token grid) shows the student the image with the hidden patches replaced by a
learned mask token (SimMIM's way of masking Swin), hidden in units of the last
stage's cell; Swin has no class token to guide the choice, so those units are
drawn at random (seeded). Each
student block is aligned with its depth-mapped teacher block, mixing only the
student blocks of the same stage (the only ones of the same shape).

The alignment module and the mask token are for training only: `finalize`
removes them, so the deployed student is the plain half-depth backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PelaBenchError
from common.objective import Batch, Objective
from methods.base import Method, MethodOptions, refuse_ratio, register_method
from methods.tinybert import check_halvable, halve_depth


class DynamicAlignment(nn.Module):
    """Per student block a linear adapter (identity at start); per target layer, softmax
    weights over the adapted student blocks of the target's stage."""

    def __init__(self, dims: list[int], stages: list[int], target_stages: list[int]) -> None:
        super().__init__()
        self.adapters = nn.ModuleList(nn.Linear(d, d) for d in dims)
        for a in self.adapters:
            nn.init.eye_(a.weight)
            nn.init.zeros_(a.bias)
        self.stages = stages
        self.target_stages = target_stages
        # start with target j drawing on student block j (its own depth-mapped block)
        logits = torch.full((len(target_stages), len(dims)), -4.0)
        logits[torch.arange(len(target_stages)), torch.arange(len(target_stages)).clamp(max=len(dims) - 1)] = 4.0
        self.mix = nn.Parameter(logits)

    def forward(self, student_features: list[torch.Tensor]) -> list[torch.Tensor]:
        adapted = [a(f) for a, f in zip(self.adapters, student_features)]
        out = []
        for j, stage in enumerate(self.target_stages):
            members = [i for i, s in enumerate(self.stages) if s == stage]
            weights = self.mix[j, members].softmax(dim=-1)
            out.append(sum(w * adapted[i] for w, i in zip(weights, members)))
        return out


def teacher_guided_keep(cls_scores: torch.Tensor, keep: int, prefix: int = 1) -> torch.Tensor:
    """Indices (B, keep) of the patches the class token attends to most, ascending.

    `cls_scores`: (B, heads, N) pre-softmax scores of the class token (token 0) over all
    tokens, of which the first `prefix` are the class and register tokens.
    """
    attn = cls_scores.softmax(dim=-1).mean(1)[:, prefix:]  # over patches, heads averaged
    return attn.topk(keep, dim=-1).indices.sort(dim=-1).values


def random_cell_mask(batch: int, grid: int, cell: int, mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(B, grid, grid) visibility, hidden in square units of `cell` patches."""
    cells = grid // cell
    keep = max(1, round(cells * cells * (1 - mask_ratio)))
    order = torch.rand(batch, cells * cells, generator=generator).argsort(dim=-1)
    visible = torch.zeros(batch, cells * cells, dtype=torch.bool)
    visible.scatter_(1, order[:, :keep], True)
    visible = visible.reshape(batch, cells, cells)
    return visible.repeat_interleave(cell, 1).repeat_interleave(cell, 2)


@dataclass
class MaskAlignOptions(MethodOptions):
    mask_ratio: float = 0.7
    smooth_l1_beta: float = 2.0
    base_weight: float = 1.0

    def __post_init__(self) -> None:
        refuse_ratio(self, "maskalign", "its student is the teacher at half depth")
        if not 0 <= self.mask_ratio < 1:
            raise PelaBenchError(f"maskalign option mask_ratio must be in [0, 1), got {self.mask_ratio}")


@register_method("maskalign")
class MaskAlign(Method):
    takes_ratio = False
    options_cls = MaskAlignOptions

    def __init__(self, options: MaskAlignOptions) -> None:
        super().__init__(options)
        self._generator = torch.Generator().manual_seed(0)  # the random cell masks of a "mask_token" backbone

    @staticmethod
    def check_backbone(info) -> None:
        check_halvable("maskalign", info)
        if info.masking not in ("drop", "mask_token"):
            raise PelaBenchError(f"maskalign does not apply to {info.name}: the backbone declares no way to "
                                 "hide image patches (masking 'drop' or 'mask_token')")
        if info.masking == "drop" and not info.attention_scores:
            raise PelaBenchError(f"maskalign does not apply to {info.name}: attentive masking reads the "
                                 "teacher's attention, and the backbone declares none")

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        self.check_backbone(teacher.info)
        student = halve_depth(teacher)
        stages = student.block_stages()
        dims = [student.info.embed_dims[s] for s in stages]
        student.alignment = DynamicAlignment(dims, stages, stages)
        if student.info.masking == "mask_token":
            student.mask_token = nn.Parameter(torch.zeros(student.info.embed_dims[0]))
        self._generator.manual_seed(0)
        return student

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])

    def finalize(self, student: nn.Module) -> nn.Module:
        for name in ("alignment", "mask_token"):
            if hasattr(student, name):
                delattr(student, name)
        return student

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective) -> dict[str, torch.Tensor]:
        images = batch["image"]
        if teacher.info.masking == "mask_token":
            align = self._mask_token_alignment(student, teacher, images)
        else:
            align = self._dropped_token_alignment(student, teacher, images)
        terms = {"align": align.detach()}
        total = align
        if self.options.base_weight > 0:
            base_loss = base.loss(base.forward(student, batch), batch)
            total = total + self.options.base_weight * base_loss
            terms["base"] = base_loss.detach()
        terms["loss"] = total
        return terms

    def _mask_token_alignment(self, student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_tokens = teacher.image_block_states(images)
        grid = t_tokens[0].shape[1]
        cell = grid // t_tokens[-1].shape[1]  # one last-stage cell, in patches
        visible = random_cell_mask(len(images), grid, cell, self.options.mask_ratio, self._generator).to(images.device)
        aligned = student.alignment(student.forward_masked(images, visible, student.mask_token))
        losses = []
        for a, t_index in zip(aligned, student.layer_map):
            t = t_tokens[t_index]
            stride = grid // t.shape[1]
            keep = visible[:, ::stride, ::stride]
            losses.append(F.smooth_l1_loss(a[keep], F.layer_norm(t, t.shape[-1:])[keep], beta=self.options.smooth_l1_beta))
        return torch.stack(losses).mean()

    def _dropped_token_alignment(self, student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), teacher.attention_scores() as scores:
            t_tokens = teacher.image_block_states(images)
        prefix = teacher.num_prefix_tokens
        n_patches = t_tokens[-1].shape[1] - prefix
        keep = max(1, round(n_patches * (1 - self.options.mask_ratio)))
        keep_idx = teacher_guided_keep(scores[-1][:, :, 0, :], keep, prefix)
        visible = torch.cat([torch.arange(prefix, device=keep_idx.device).expand(len(images), -1), keep_idx + prefix],
                            dim=1)
        targets = [
            F.layer_norm(t, t.shape[-1:]).gather(1, visible[..., None].expand(-1, -1, t.shape[-1]))
            for t in t_tokens[-student.info.depth:]
        ]
        aligned = student.alignment(student.forward_visible(images, keep_idx))
        return torch.stack([F.smooth_l1_loss(a, t, beta=self.options.smooth_l1_beta)
                            for a, t in zip(aligned, targets)]).mean()
