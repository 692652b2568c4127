"""The task contract and its registry: what every downstream (or pre-training) task provides.

A task owns its data (the real on-disk format and a synthetic writer for the
embedded world), what it builds on a student backbone, how it trains and
evaluates, its metric names and which one ranks, the inputs its model is
measured on, its schedule per budget, and the leaderboard columns it adds. The
suite asks only this contract: adding a task is one new file with
``@register_task``, and ``--import FILE`` brings in a task from outside the package.

A task whose `objective()` is not None can also pre-train: the teacher trains on
it and every method's student starts from it (the backbone names its
pre-training task in `BackboneInfo.pretrain_task`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from common.errors import PelaBenchError
from common.objective import Objective


@dataclass(frozen=True)
class Metric:
    name: str  # the key in `TaskResult.metrics` and in rows (the paper's name: top1, mIoU, AP_box, ...)
    header: str  # the leaderboard's column title
    higher_is_better: bool = True
    fmt: str = "{:.2f}"
    in_table: bool = True  # False: stored in rows and the CSV, left out of the markdown leaderboard


@dataclass(frozen=True)
class Column:
    """An extra leaderboard column: a dotted path into the row, e.g. ``finetune.train_batch``."""

    path: str
    header: str
    fmt: str = "{}"


@dataclass
class TaskData:
    """A task's data, loaded and checked: `root` and `provenance` for rows, the rest the task's own."""

    root: Path
    provenance: str  # "synthetic" or "real"
    content: Any = None
    audit: dict[str, Any] = field(default_factory=dict)  # what the loader counted or skipped; stored in rows


@dataclass
class RunContext:
    """Where and how a task runs one student."""

    device: torch.device
    seed: int
    work_dir: Path  # the task's own checkpoints and logs (fine-tunes resume from here)
    workers: int = 1
    progress: bool = True
    train_batch: int | None = None  # None: the schedule's; set by Table 9's batch scaling
    # The suite's trainer for tasks that fine-tune with it, checkpointing into `work_dir`:
    # ``fit(model, loss_fn, dataset, *, epochs, lr, batch_size, weight_decay, warmup_epochs, desc)``
    # returns per-epoch means of the loss terms (`benchmark.trainer.train`).
    fit: Callable[..., list[dict[str, float]]] | None = None
    # The uncompressed model, for analyses that compare a student with it (feature similarity).
    reference: nn.Module | None = None


@dataclass
class TaskResult:
    metrics: dict[str, float]
    model: nn.Module  # what the efficiency measurements run (the student, or the fine-tuned model)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)  # stored under the row's "finetune"
    analysis: dict[str, Any] = field(default_factory=dict)  # stored under the row's "analysis" (figures)


class Task:
    """Base class of every task. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    metrics: ClassVar[tuple[Metric, ...]] = ()
    primary_metric: ClassVar[str] = ""
    columns: ClassVar[tuple[Column, ...]] = ()
    # What a student must provide beyond its forward ("pyramid": feature maps for dense heads);
    # a method whose student lacks one is skipped for this task with its reason (`Method.lacks`).
    needs: ClassVar[tuple[str, ...]] = ()
    # The methods of the paper's table for this task: what `--tasks` alone runs (None: every method).
    paper_methods: ClassVar[tuple[str, ...] | None] = None
    # Whether `run` trains (only then does Table 9's batch scaling apply).
    fine_tunes: ClassVar[bool] = False
    # One schedule per budget name ("tiny", "smoke", "paper", ...): the task's own dataclass.
    schedules: ClassVar[dict[str, Any]] = {}
    # Where a budget trains the smaller backbones (up to `benchmark.config.LARGE_PARAMS`) longer or
    # narrower than the paper-size ones: that budget's schedule for them.
    small_schedules: ClassVar[dict[str, Any]] = {}
    layout: ClassVar[str] = ""  # the on-disk format `--data NAME=DIR` expects, for messages
    # Keyword arguments for `benchmark.efficiency.measure_all` (e.g. count FLOPs on real tensors).
    measure_options: ClassVar[dict[str, Any]] = {}
    # What the efficiency columns cover, for the table heading ("" for the backbone alone).
    measure_scope: ClassVar[str] = ""

    def check_backbone(self, info: Any) -> None:
        """Raise `PelaBenchError` if the task cannot run on a backbone (`BackboneInfo`), before any work."""

    def bind(self, info: Any) -> None:
        """Adapt to the backbone this run serves, before any data loads (a text task picks its tokenizer)."""

    # -- schedule and data -------------------------------------------------------------
    def schedule(self, budget: str, small: bool = False) -> Any:
        """The task's schedule under `budget`; `small`: for a backbone of at most 10 M parameters."""
        if budget not in self.schedules:
            raise PelaBenchError(f"task {self.name!r} has no schedule for budget {budget!r} "
                                 f"(it has {', '.join(sorted(self.schedules))})")
        if small and budget in self.small_schedules:
            return self.small_schedules[budget]
        return self.schedules[budget]

    def synthetic_spec(self, schedule: Any, img_size: int | None) -> dict[str, Any]:
        """Everything the synthetic writer's output depends on (hashed for the data stage)."""
        raise NotImplementedError

    def write_synthetic(self, root: Path, spec: dict[str, Any], seed: int, progress: bool) -> None:
        raise NotImplementedError

    def check_root(self, root: Path) -> None:
        """Cheap layout check of a user's data root, run before any work; raise naming what is missing."""

    def load(self, root: Path, schedule: Any, img_size: int | None) -> TaskData:
        raise NotImplementedError

    def check_data(self, data: TaskData, progress: bool = True) -> dict[str, int]:
        """Read every file of the data set once (``--check-data``); raise naming the first bad one."""
        return {}

    # -- pre-training (tasks that can train a teacher) ---------------------------------------
    def objective(self) -> Objective | None:
        return None

    def train_split(self, data: TaskData) -> Dataset:
        """Samples as dicts (``{"image": ..., "label": ...}``) for the teacher and pre-training."""
        raise PelaBenchError(f"task {self.name!r} cannot pre-train a backbone")

    def backbone_overrides(self, data: TaskData) -> dict[str, Any]:
        """Constructor settings the backbone needs for this data (e.g. its number of classes)."""
        return {}

    # -- downstream ----------------------------------------------------------------------
    def run(self, student: nn.Module, data: TaskData, schedule: Any, ctx: RunContext) -> TaskResult:
        """Fine-tune (if the task does) and evaluate one student; the metrics use `metrics`' names."""
        raise NotImplementedError

    def discard_resume_state(self, work_dir: Path) -> None:
        """Delete what `run` left in `work_dir` only to resume a killed fine-tune (keep the logs).

        Called once the row is stored; a fine-tune's checkpoints carry optimiser state and
        take gigabytes per row at real sizes.
        """

    def example_inputs(self, data: TaskData, schedule: Any, model: nn.Module, batch_size: int
                       ) -> dict[str, torch.Tensor]:
        """Keyword inputs of `model`'s forward for the efficiency measurements (random values)."""
        raise NotImplementedError

    def measured_module(self, result: TaskResult) -> nn.Module:
        """The module whose forward the efficiency measurements time and count."""
        return result.model

    def train_step(self, student: nn.Module, data: TaskData, schedule: Any, batch: int,
                   device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
        """The fine-tuned model and one forward + backward at `batch`, for training-memory measurements."""
        raise PelaBenchError(f"task {self.name!r} does not fine-tune; there is no training step to measure")

    def input_size(self, schedule: Any, data: TaskData) -> int | None:
        """The square side the model is measured at, shown in tables (None: not an image size)."""
        return None

    def describe_schedule(self, schedule: Any, batch: int | None = None) -> str:
        """The schedule in a few words for the log (`batch`: the one Table 9 chose instead of the schedule's)."""
        return ""


def trainable_copy(student: nn.Module) -> nn.Module:
    """A copy of a student for one fine-tune, every weight trainable (every method's student is
    fine-tuned whole downstream, as in the paper). A copy, so heads and necks added for one task
    never leak into the student other tasks see. Through `requires_grad_`, so a backbone's EMA
    copies stay frozen."""
    return copy.deepcopy(student).train().requires_grad_(True)


def check_files(paths: list[Path], desc: str, progress: bool = True) -> int:
    """Open and fully decode every image in `paths`; the first unreadable one is named."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    for path in tqdm(paths, desc=desc, disable=not progress, leave=False, mininterval=1.0):
        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise PelaBenchError(f"cannot read image {path}: {exc}") from None
    return len(paths)


_TASKS: dict[str, type[Task]] = {}
_ALIASES: dict[str, str] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a `Task` subclass under its `name` and `aliases`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no task name")
    # A task without metrics only pre-trains backbones (`vlp`); one with metrics ranks by one of them.
    if (cls.metrics or cls.primary_metric) and cls.primary_metric not in {m.name for m in cls.metrics}:
        raise ValueError(f"task {cls.name!r}: primary_metric {cls.primary_metric!r} is not one of its metrics")
    # Only the class's own aliases: a task derived from another must not claim its parent's.
    cls.aliases = tuple(cls.__dict__.get("aliases", ()))
    for key in (cls.name, *cls.aliases):
        owner = _TASKS.get(key) or _TASKS.get(_ALIASES.get(key, ""))
        if owner is not None and owner is not cls:
            raise ValueError(f"task name {key!r} is registered twice ({owner.__name__} and {cls.__name__})")
    _TASKS[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def canonical_task_name(name: str) -> str:
    key = _ALIASES.get(name, name)
    if key in _TASKS:
        return key
    raise PelaBenchError(f"unknown task {name!r}; available tasks: {', '.join(list_tasks())} "
                         "(--import FILE registers one from outside the package)")


def create_task(name: str) -> Task:
    return _TASKS[canonical_task_name(name)]()
