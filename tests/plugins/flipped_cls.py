"""A task from outside the package, in one file: classify vertically flipped scenes.

Used by `tests/test_suite_contracts.py` as `tools/run_suite.py --import tests/plugins/flipped_cls.py
--tasks flipped_cls`: it proves that a new task is an addition (this file), not edits to the suite.
It reuses the classification task's data and schedule, and brings its own metric name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tasks import Metric, RunContext, TaskData, TaskResult, register_task
from tasks.classification import ClassificationSchedule, ClassificationTask, DictSamples


class FlippedSamples(DictSamples):
    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = super().__getitem__(index)
        return {**sample, "image": sample["image"].flip(-2)}


@register_task
class FlippedClassification(ClassificationTask):
    name = "flipped_cls"
    aliases = ()
    metrics = (Metric("flip_top1", "flipped top-1 (%)"),)
    primary_metric = "flip_top1"

    @torch.inference_mode()
    def run(self, student: nn.Module, data: TaskData, schedule: ClassificationSchedule, ctx: RunContext) -> TaskResult:
        student.eval()
        correct = total = 0
        for batch in DataLoader(FlippedSamples(data.content.val), batch_size=schedule.eval_batch_size):
            logits = student(batch["image"].to(ctx.device))
            correct += (logits.argmax(-1).cpu() == batch["label"]).sum().item()
            total += len(batch["label"])
        return TaskResult({"flip_top1": 100.0 * correct / total}, student)
