"""The task registry: `@register_task`, `create_task`, aliases, and the errors for bad or unknown names."""

import pytest
import torch

import tasks.base
from common.errors import PelaBenchError
from tasks import (
    Metric,
    Task,
    canonical_task_name,
    create_task,
    list_tasks,
    register_task,
)
from tasks.classification import ClassificationTask
from tasks.detection import DetectionTask
from tasks.segmentation import SegmentationTask


@pytest.fixture
def clean_registry():
    """Whatever a test registers (or half-registers) is gone afterwards."""
    saved_tasks, saved_aliases = dict(tasks.base._TASKS), dict(tasks.base._ALIASES)
    yield
    tasks.base._TASKS.clear()
    tasks.base._TASKS.update(saved_tasks)
    tasks.base._ALIASES.clear()
    tasks.base._ALIASES.update(saved_aliases)


def test_the_package_registers_its_tasks_with_aliases():
    assert {"cls", "seg", "det"} <= set(list_tasks())
    for name, alias, cls in (("cls", "classification", ClassificationTask), ("seg", "segmentation", SegmentationTask),
                             ("det", "detection", DetectionTask)):
        assert canonical_task_name(alias) == canonical_task_name(name) == name
        assert type(create_task(alias)) is cls and type(create_task(name)) is cls
        task = create_task(name)
        assert task.primary_metric in {m.name for m in task.metrics}
        assert {"tiny", "smoke", "paper"} <= set(task.schedules)
    assert create_task("seg").needs == ("pyramid",) and create_task("seg").fine_tunes
    assert create_task("cls").needs == () and not create_task("cls").fine_tunes


def test_register_a_new_task(clean_registry):
    @register_task
    class ToyTask(ClassificationTask):
        name = "toy_cls"
        aliases = ("toy", "toy-classification")
        metrics = (Metric("hits", "hits (%)"), Metric("top1", "top-1 (%)", in_table=False))
        primary_metric = "hits"

        def evaluate(self, model, loader, device="cpu"):
            metrics = super().evaluate(model, loader, device)
            return {"hits": metrics["top1"], "top1": metrics["top1"]}

    assert "toy_cls" in list_tasks() and "toy" not in list_tasks()
    for name in ("toy_cls", "toy", "toy-classification"):
        assert canonical_task_name(name) == "toy_cls"
        assert type(create_task(name)) is ToyTask
    task = create_task("toy")
    assert task.primary_metric == "hits" and [m.name for m in task.metrics] == ["hits", "top1"]
    assert task.schedule("tiny") is ClassificationTask.schedules["tiny"]  # inherited from its base
    # the inherited contract works with the new metric names
    data = [{"image": torch.zeros(2, 3, 8, 8), "label": torch.tensor([1, 0])}]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    assert task.evaluate(model, data) == {"hits": 50.0, "top1": 50.0}
    # registering the same class again is harmless
    assert register_task(ToyTask) is ToyTask


def test_a_second_class_under_a_taken_name_is_refused(clean_registry):
    @register_task
    class First(ClassificationTask):
        name = "dup_task"
        aliases = ("dup_alias",)

    class Second(ClassificationTask):
        name = "dup_task"
        aliases = ()

    with pytest.raises(ValueError, match="'dup_task' is registered twice"):
        register_task(Second)

    class ByAlias(ClassificationTask):
        name = "other_task"
        aliases = ("dup_alias",)

    with pytest.raises(ValueError, match="'dup_alias' is registered twice"):
        register_task(ByAlias)

    class NameIsAnAlias(ClassificationTask):
        name = "classification"  # ClassificationTask's alias
        aliases = ()

    with pytest.raises(ValueError, match="registered twice"):
        register_task(NameIsAnAlias)

    class InheritsAliases(ClassificationTask):
        name = "inherits_aliases"  # a subclass does not claim ClassificationTask's alias "classification"

    register_task(InheritsAliases)
    assert InheritsAliases.aliases == () and type(create_task("inherits_aliases")) is InheritsAliases
    assert type(create_task("dup_task")) is First and type(create_task("dup_alias")) is First
    assert type(create_task("classification")) is ClassificationTask


def test_primary_metric_must_be_one_of_the_metrics(clean_registry):
    class BadPrimary(ClassificationTask):
        name = "bad_primary"
        aliases = ()
        metrics = (Metric("acc", "acc"),)
        primary_metric = "top1"

    with pytest.raises(ValueError, match="primary_metric 'top1' is not one of its metrics"):
        register_task(BadPrimary)

    class NoMetrics(Task):
        name = "no_metrics"
        primary_metric = "x"

    with pytest.raises(ValueError, match="primary_metric"):
        register_task(NoMetrics)

    class Nameless(Task):
        metrics = (Metric("x", "x"),)
        primary_metric = "x"

    with pytest.raises(ValueError, match="no task name"):
        register_task(Nameless)


def test_a_refused_task_is_not_left_registered(clean_registry):
    class BadPrimary(ClassificationTask):
        name = "half_registered"
        aliases = ("half_alias",)
        metrics = (Metric("acc", "acc"),)
        primary_metric = "top1"

    with pytest.raises(ValueError):
        register_task(BadPrimary)
    assert "half_registered" not in list_tasks()
    assert "half_alias" not in tasks.base._ALIASES


def test_unknown_name_lists_the_tasks():
    with pytest.raises(PelaBenchError) as e:
        create_task("dance")
    msg = str(e.value)
    assert "unknown task 'dance'" in msg and "cls, det, grounding, retrieval, seg, ve, vlp, vqa, zeroshot" in msg and "--import" in msg
    with pytest.raises(PelaBenchError, match="unknown task"):
        canonical_task_name("dance")


def test_registry_is_clean_after_the_tests_above():
    assert not {"toy_cls", "dup_task", "other_task", "bad_primary", "half_registered"} & set(list_tasks())
    assert not {"toy", "dup_alias", "half_alias"} & set(tasks.base._ALIASES)
