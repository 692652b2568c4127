"""Table 9 ("PELA+"): fine-tune each compressed model at the largest batch that fits the
uncompressed model's training memory.

The uncompressed (`dense`) model's training peak at the schedule's batch is the
limit; every other method gets an extra row `<method>+` at the largest batch, up
to twice the schedule's, whose own measured peak stays within it. Peaks are
measured on one forward + backward (`Task.train_step`) plus AdamW's two moments
(`benchmark.efficiency.measure_train_memory`) and cached per method, task and batch.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from benchmark.config import REFERENCE_METHOD
from benchmark.efficiency import measure_train_memory
from common.seed import seed_everything
from tasks import Task, TaskData

log = logging.getLogger("pela_bench")


class BatchScaling:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.seed = seed
        self._peaks: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._reference: dict[str, tuple[int, dict[str, Any]]] = {}  # task -> (batch, peak)

    def peak(self, method: str, task: Task, student: nn.Module, data: TaskData, schedule: Any,
             batch: int) -> dict[str, Any]:
        """Training peak of `method`'s student fine-tuned on `task` at `batch` (cached)."""
        key = (method, task.name, batch)
        if key not in self._peaks:
            seed_everything(self.seed)
            model, step = task.train_step(student, data, schedule, batch, self.device)
            try:
                self._peaks[key] = measure_train_memory(model, step, self.device)
            finally:
                del model, step
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return self._peaks[key]

    def has_reference(self, task: Task) -> bool:
        return task.name in self._reference

    def set_reference(self, task: Task, student: nn.Module, data: TaskData, schedule: Any) -> dict[str, Any]:
        memory = self.peak(REFERENCE_METHOD, task, student, data, schedule, schedule.batch_size)
        self._reference[task.name] = (schedule.batch_size, memory)
        log.info("%s / %s: training peak %.0f MB at batch %d, the limit for the '+' rows", REFERENCE_METHOD,
                 task.name, memory["peak_bytes"] / 2**20, schedule.batch_size)
        return memory

    def largest_batch(self, method: str, task: Task, student: nn.Module, data: TaskData, schedule: Any
                      ) -> tuple[int, dict[str, Any]]:
        """The largest batch (up to twice the schedule's) whose training peak fits the reference's."""
        limit = self._reference[task.name][1]["peak_bytes"]
        base = schedule.batch_size
        best, best_mem = base, self.peak(method, task, student, data, schedule, base)
        if best_mem["peak_bytes"] > limit:
            return base, best_mem  # does not even fit at the base batch; reported as is
        for batch in range(base + 1, 2 * base + 1):
            mem = self.peak(method, task, student, data, schedule, batch)
            if mem["peak_bytes"] > limit:
                break
            best, best_mem = batch, mem
        return best, best_mem

    def row_fields(self, task: Task, memory: dict[str, Any]) -> dict[str, Any]:
        """What a row's "finetune" section records about memory."""
        out = {"train_peak_mb": memory["peak_bytes"] / 2**20, "train_peak_method": memory["method"]}
        if task.name in self._reference:
            batch, ref = self._reference[task.name]
            out.update(reference_peak_mb=ref["peak_bytes"] / 2**20, reference_batch=batch)
        return out

    def limit_mb(self, task: Task) -> float:
        return self._reference[task.name][1]["peak_bytes"] / 2**20
