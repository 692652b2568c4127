"""Tasks, one file each, one contract (`tasks.base.Task`); the synthetic world in `synthetic.py`.

Segmentation and detection import the OpenMMLab toolboxes only when they run, so
classification-only use never pays for them.
"""

from __future__ import annotations

from tasks.base import (
    Column,
    Metric,
    RunContext,
    Task,
    TaskData,
    TaskResult,
    canonical_task_name,
    create_task,
    list_tasks,
    register_task,
)

# Import the task files so they register themselves.
from tasks import (classification, detection, entailment, grounding, retrieval, segmentation,  # noqa: E402,F401
                   vlp, vqa, zeroshot)

__all__ = ["Column", "Metric", "RunContext", "Task", "TaskData", "TaskResult",
           "canonical_task_name", "create_task", "list_tasks", "register_task"]
