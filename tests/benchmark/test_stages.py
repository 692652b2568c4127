"""The stage cache: a stage is computed once, reused after, and an unfinished one is computed again."""

import json

import pytest

from benchmark.config import config_hash
from benchmark.stages import MARKER, StageCache


class Counter:
    def __init__(self, report=None):
        self.calls = []
        self.report = report if report is not None else {"value": 1}

    def __call__(self, folder):
        self.calls.append(folder)
        (folder / "out.txt").write_text("done")
        return self.report


def test_stage_folder_is_named_by_kind_name_and_spec_hash(tmp_path):
    cache = StageCache(tmp_path)
    spec = {"teacher": "abc", "alpha": 1.0, "schedule": {"epochs": 1}}
    stage = cache.stage("students/deit_micro", "pela", spec)
    assert stage.hash == config_hash(spec) and len(stage.hash) == 12
    assert stage.dir == tmp_path / "students" / "deit_micro" / f"pela-{stage.hash}"
    assert cache.stage("students/deit_micro", "pela", dict(reversed(spec.items()))).dir == stage.dir  # key order
    assert cache.stage("students/deit_micro", "pela", {**spec, "alpha": 0.5}).hash != stage.hash
    assert stage.done() is None and not stage.dir.exists()  # nothing is created until it runs


def test_computes_once_then_reuses(tmp_path):
    compute = Counter({"loss": 0.5, "history": [{"loss": 1.0}]})
    stage = StageCache(tmp_path).stage("teachers", "deit_micro", {"seed": 0})
    assert StageCache(tmp_path).run(stage, compute) == {"loss": 0.5, "history": [{"loss": 1.0}]}
    assert compute.calls == [stage.dir] and (stage.dir / "out.txt").read_text() == "done"
    marker = json.loads((stage.dir / MARKER).read_text())
    assert marker["spec"] == {"seed": 0} and marker["hash"] == stage.hash and marker["kind"] == "teachers"

    # A new cache over the same folder (a new process) reads the report back and computes nothing.
    again = StageCache(tmp_path)
    never = Counter()
    assert again.run(again.stage("teachers", "deit_micro", {"seed": 0}), never) == compute.report
    assert never.calls == []
    # Another spec is another stage.
    other = again.stage("teachers", "deit_micro", {"seed": 1})
    assert again.run(other, Counter({"x": 2})) == {"x": 2} and other.dir != stage.dir


def test_folder_without_marker_is_computed_again_with_its_leftovers(tmp_path):
    cache = StageCache(tmp_path)
    stage = cache.stage("students/deit_micro", "pela", {"seed": 0})
    stage.dir.mkdir(parents=True)
    (stage.dir / "checkpoint.pt").write_text("half-way")  # what a killed stage left behind

    seen = []

    def resume(folder):
        seen.append((folder / "checkpoint.pt").read_text())
        return {"resumed": True}

    assert stage.done() is None
    assert cache.run(stage, resume) == {"resumed": True}
    assert seen == ["half-way"] and stage.done() == {"resumed": True}


def test_a_failed_stage_is_not_marked_finished(tmp_path):
    cache = StageCache(tmp_path)
    stage = cache.stage("rows/deit_micro", "pela-cls", {"seed": 0})

    def dies(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.run(stage, dies)
    assert stage.dir.is_dir() and not (stage.dir / MARKER).exists() and stage.done() is None
    compute = Counter()
    cache.run(stage, compute)
    assert len(compute.calls) == 1 and stage.done() == {"value": 1}


def test_update_replaces_a_finished_report(tmp_path):
    cache = StageCache(tmp_path)
    stage = cache.stage("rows/deit_micro", "pela-seg", {"seed": 0})
    cache.run(stage, Counter({"row": {"finetune": {}}}))
    cache.update(stage, {"row": {"finetune": {"train_peak_mb": 3.0}}})
    never = Counter()
    assert cache.run(stage, never) == {"row": {"finetune": {"train_peak_mb": 3.0}}} and never.calls == []
    assert not list(stage.dir.glob("*.tmp")) and not list(stage.dir.glob(".*.tmp"))  # written atomically


def _compute_in_process(root, log_path):
    import time as _time

    def compute(folder):
        with open(log_path, "a") as log:
            log.write("computed\n")
        _time.sleep(0.5)
        return {"ok": True}

    cache = StageCache(root)
    return cache.run(cache.stage("teachers", "t", {"a": 1}), compute)


def test_two_processes_sharing_out_compute_a_stage_once(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    log_path = tmp_path / "calls.txt"
    procs = [ctx.Process(target=_compute_in_process, args=(tmp_path / "out", log_path)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert log_path.read_text() == "computed\n"
