"""Downstream tasks, one file each; the synthetic world generator in `synthetic.py`.

Segmentation and detection import the OpenMMLab toolboxes only when they run, so
classification-only use never pays for (or depends on) them.
"""

from __future__ import annotations

from common.errors import PelaBenchError
from tasks.classification import ClassificationTask
from tasks.detection import DetectionTask
from tasks.segmentation import SegmentationTask

_TASKS = {"cls": ClassificationTask, "seg": SegmentationTask, "det": DetectionTask}
_ALIASES = {"classification": "cls", "segmentation": "seg", "detection": "det"}
DENSE_TASKS = ("seg", "det")
# Named in the paper and planned; the CLI refuses them up front until they land.
PLANNED_TASKS = ("retrieval", "vqa", "ve", "grounding")


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def create_task(name: str):
    key = _ALIASES.get(name, name)
    if key in _TASKS:
        return _TASKS[key]()
    if key in PLANNED_TASKS:
        raise PelaBenchError(f"task {name!r} is not implemented yet; available tasks: {', '.join(list_tasks())}")
    raise PelaBenchError(f"unknown task {name!r}; available tasks: {', '.join(list_tasks())}")


__all__ = ["ClassificationTask", "SegmentationTask", "DetectionTask", "DENSE_TASKS", "create_task", "list_tasks",
           "PLANNED_TASKS"]
