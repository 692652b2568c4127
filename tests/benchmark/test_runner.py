"""A fast end-to-end pass through every stage, plus resume-after-kill."""

import json

import pytest

import benchmark.runner as runner_mod
from benchmark.config import Budget, Schedule, SuiteConfig
from benchmark.efficiency import count_parameters
from benchmark.runner import SuiteRunner
from benchmark.store import ResultStore
from tasks.dense import DenseSchedule

TINY = Budget(
    name="tiny",
    img_size=64,
    teacher=Schedule(epochs=1, lr=1e-3, batch_size=16, warmup_epochs=0),
    pretrain=Schedule(epochs=1, lr=1e-3, batch_size=16, warmup_epochs=0),
    synthetic_train=32,
    synthetic_val=16,
    eval_batch_size=16,
    latency_repeats=2,
    seg=DenseSchedule(by_epoch=False, length=1, batch_size=2, lr=1e-4, weight_decay=0.01, warmup_iters=1,
                      img_scale=(256, 64), crop_size=(64, 64), val_subset=2, log_interval=1),
    det=DenseSchedule(by_epoch=False, length=1, batch_size=2, lr=1e-4, weight_decay=0.05, warmup_iters=1,
                      img_scale=(64, 64), val_subset=2, log_interval=1, rpn_train_proposals=50,
                      rcnn_train_samples=16, rpn_test_proposals=20),
    dense_synthetic_train=4,
    dense_synthetic_val=2,
    dense_latency_repeats=1,
)


@pytest.fixture
def cfg(tmp_path):
    return SuiteConfig(methods=("dense", "svd", "pela"), out=str(tmp_path / "runs"),
                       results=str(tmp_path / "results"))


def test_suite_end_to_end_then_resume_without_rework(cfg, monkeypatch):
    rows = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert [r["method"] for r in rows] == ["dense", "svd", "pela"]
    for r in rows:
        assert r["provenance"] == "synthetic" and r["task"] == "cls"
        assert 0 <= r["metrics"]["top1"] <= 100
        assert r["efficiency"]["params_m"] > 0 and r["efficiency"]["gflops"] > 0
        assert r["config"]["suite"]["backbone"] == "deit_micro"
    by = {r["method"]: r for r in rows}
    assert by["svd"]["efficiency"]["params_m"] < 0.6 * by["dense"]["efficiency"]["params_m"]
    assert set(by["pela"]["loss_terms"]) == {"loss", "base", "fd", "rwp"}
    assert by["pela"]["ablation"] == {"fd": True, "rwp": True}
    md = (cfg_results := __import__("pathlib").Path(cfg.results)) / "leaderboard.md"
    assert "pela" in md.read_text() and (cfg_results / "leaderboard.csv").is_file()

    # A second run trains nothing and writes no new row.
    def no_training(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(runner_mod, "train", no_training)
    again = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert [r["timestamp"] for r in again] == [r["timestamp"] for r in rows]
    lines = (cfg_results / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_killed_run_resumes_at_the_unfinished_stage(cfg, monkeypatch):
    real_train = runner_mod.train
    calls = []

    def dying_train(*a, **k):
        calls.append(k.get("desc"))
        if k.get("desc") == "pela":
            raise KeyboardInterrupt  # the user's Ctrl-C in the middle of PELA's pre-training
        return real_train(*a, **k)

    monkeypatch.setattr(runner_mod, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        SuiteRunner(cfg, budget=TINY, progress=False).run()
    store = __import__("pathlib").Path(cfg.results) / "results.jsonl"
    assert [json.loads(l)["method"] for l in store.read_text().splitlines()] == ["dense", "svd"]

    calls.clear()
    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: (calls.append(k.get("desc")), real_train(*a, **k))[1])
    rows = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert calls == ["pela"]  # the teacher was reused, dense and svd rows kept
    assert [r["method"] for r in rows] == ["dense", "svd", "pela"]
    assert len(store.read_text().splitlines()) == 3


def test_changed_option_reruns_only_that_method(cfg, monkeypatch):
    SuiteRunner(cfg.with_(methods=("pela",)), budget=TINY, progress=False).run()
    calls = []
    real_train = runner_mod.train
    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: (calls.append(k.get("desc")), real_train(*a, **k))[1])
    rows = SuiteRunner(cfg.with_(methods=("pela",), method_options={"alpha": 0.5}), budget=TINY, progress=False).run()
    assert calls == ["pela"] and rows[0]["config"]["method"]["alpha"] == 0.5


def test_a_row_does_not_depend_on_which_other_methods_ran(tmp_path):
    def lora_row(methods, sub):
        cfg = SuiteConfig(methods=methods, out=str(tmp_path / "runs"), results=str(tmp_path / sub))
        return [r for r in SuiteRunner(cfg, budget=TINY, progress=False).run() if r["method"] == "lora"][0]

    alone = lora_row(("lora",), "a")
    import shutil

    shutil.rmtree(tmp_path / "runs" / "students")  # force the student to train again
    after_others = lora_row(("svd", "pela", "lora"), "b")
    assert alone["loss_terms"] == after_others["loss_terms"]
    assert alone["metrics"] == after_others["metrics"]


def test_dense_rows_with_table9_batch_scaling_then_resume(tmp_path, monkeypatch):
    """seg rows for dense and PELA, then PELA+ (larger batch within the dense model's training memory)."""
    from tasks.segmentation import SegmentationTask

    cfg = SuiteConfig(methods=("pela", "dense", "tome", "lora"), tasks=("seg",), scale_batch=False,
                      out=str(tmp_path / "runs"), results=str(tmp_path / "results"))
    first = {r["method"]: r for r in SuiteRunner(cfg, budget=TINY, progress=False).run()}
    assert set(first) == {"dense", "pela", "lora"}  # ToMe does not apply to dense tasks
    assert all("train_peak_mb" not in r["dense"] for r in first.values())

    # With --scale-batch the stored rows gain their training peak without a second fine-tune;
    # only PELA+ trains.
    fine_tunes = []
    real_run = SegmentationTask.run

    def counting_run(self, *a, **k):
        fine_tunes.append(k.get("train_batch"))
        return real_run(self, *a, **k)

    monkeypatch.setattr(SegmentationTask, "run", counting_run)

    # Every peak is measured for real, but the search runs on a modelled one (16 B per parameter
    # + 300 kB per image): at these micro sizes one more image's activations outweigh what
    # factorising saves, so with real peaks no larger batch would ever fit.
    real_measure = SuiteRunner._measure_train_peak
    measured = {}

    def modelled_peak(self, task, result, batch):
        n = count_parameters(result.model)
        measured[n, batch] = real_measure(self, task, result, batch)["peak_bytes"]
        return {"peak_bytes": 16 * n + 300_000 * batch, "method": "modelled"}

    monkeypatch.setattr(SuiteRunner, "_measure_train_peak", modelled_peak)
    rows = SuiteRunner(cfg.with_(scale_batch=True), budget=TINY, progress=False).run()
    assert all(v > 0 for v in measured.values())
    n_pela = max(n for n, b in measured if b == 4)
    assert measured[n_pela, 4] > measured[n_pela, 2]  # activations grow with the batch
    by = {r["method"]: r for r in rows}
    # dense first: it is the memory reference. LoRA's model is larger than the dense one, so no
    # larger batch fits and it gets no '+' row (it would only repeat its plain row).
    assert list(by) == ["dense", "pela", "pela+", "lora"]
    assert by["lora"]["dense"]["train_peak_mb"] > by["dense"]["dense"]["train_peak_mb"]
    assert fine_tunes == [4]  # the largest batch within the dense model's peak, capped at twice the schedule's
    for name in ("dense", "pela", "lora"):
        assert by[name]["metrics"] == first[name]["metrics"] and by[name]["timestamp"] == first[name]["timestamp"]
    for r in rows:
        assert r["task"] == "seg" and r["provenance"] == "synthetic" and r["primary_metric"] == "mIoU"
        assert 0 <= r["metrics"]["mIoU"] <= 100
        assert r["efficiency"]["params_m"] > 1 and r["efficiency"]["gflops"] > 0  # backbone + neck + heads
        assert r["dense"]["train_peak_mb"] > 0 and r["dense"]["input_size"] == 64
    # PELA's backbone is smaller by exactly what factorisation removed; the heads are the same.
    assert by["pela"]["efficiency"]["params_m"] < by["dense"]["efficiency"]["params_m"]
    plus = by["pela+"]["dense"]
    assert plus["train_batch"] == fine_tunes[0] and plus["train_peak_mb"] <= plus["reference_peak_mb"]
    assert plus["reference_peak_mb"] == pytest.approx(by["dense"]["dense"]["train_peak_mb"])
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "mIoU (%)" in board and "| pela+ |" in board
    stored = {r["method"]: r for r in ResultStore(tmp_path / "results" / "results.jsonl").rows()}
    assert "train_peak_mb" in stored["pela"]["dense"]

    def no_fine_tune(*a, **k):
        raise AssertionError("a finished dense row ran again")

    monkeypatch.setattr(SegmentationTask, "run", no_fine_tune)
    again = SuiteRunner(cfg.with_(scale_batch=True), budget=TINY, progress=False).run()
    assert {r["method"] for r in again} == {"dense", "pela", "pela+", "lora"}


def test_real_task_data_after_synthetic_pretraining_is_a_synthetic_row_and_resumes(tmp_path, monkeypatch):
    """A row is real only if all its data is; it is found again under that label, and other
    tasks' schedules do not enter its config hash."""
    from dataclasses import replace

    from tasks.segmentation import SegmentationTask
    from tasks.synthetic import MARKER_FILE, dense_world, write_segmentation

    ade = write_segmentation(tmp_path / "ade", n_train=4, n_val=2, world=dense_world(64), progress=False)
    (ade / MARKER_FILE).unlink()  # now read as real ADE20K (mmseg's class list)
    cfg = SuiteConfig(methods=("dense",), tasks=("seg",), seg_root=str(ade), out=str(tmp_path / "runs"),
                      results=str(tmp_path / "results"))
    (row,) = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert row["provenance"] == "synthetic"  # the teacher learnt on the synthetic world

    def no_fine_tune(*a, **k):
        raise AssertionError("a finished dense row ran again")

    monkeypatch.setattr(SegmentationTask, "run", no_fine_tune)
    longer_det = replace(TINY, det=replace(TINY.det, length=5))
    (again,) = SuiteRunner(cfg, budget=longer_det, progress=False).run()
    assert again["timestamp"] == row["timestamp"]


def test_bad_dense_data_stops_the_run_before_the_teacher_trains(tmp_path, monkeypatch):
    from common.errors import PelaBenchError
    from tasks.synthetic import dense_world, write_segmentation

    ade = write_segmentation(tmp_path / "ade", n_train=2, n_val=2, world=dense_world(64), progress=False)
    victim = sorted((ade / "annotations" / "training").glob("*.png"))[0]
    victim.unlink()

    def no_training(*a, **k):
        raise AssertionError("the teacher trained before the data was checked")

    monkeypatch.setattr(runner_mod, "train", no_training)
    cfg = SuiteConfig(methods=("dense",), tasks=("seg",), seg_root=str(ade), out=str(tmp_path / "runs"),
                      results=str(tmp_path / "results"))
    with pytest.raises(PelaBenchError, match=victim.name):
        SuiteRunner(cfg, budget=TINY, progress=False).run()
