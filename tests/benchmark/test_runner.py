"""A fast end-to-end pass through every stage, plus resume-after-kill.

Stages are reused only from `--out` (the stage cache), never from the published
results store; these tests run the "tiny" budget with smaller synthetic worlds.
"""

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import benchmark.batch_scaling as scaling_mod
import benchmark.runner as runner_mod
from backbones import create_backbone
from benchmark.config import Budget, Schedule, SuiteConfig
from benchmark.provenance import code_version
from benchmark.runner import SuiteRunner
from benchmark.stages import MARKER
from benchmark.store import ResultStore
from benchmark.tables import STALE_MARK, render_markdown
from common.params import count_params

TINY = Budget(
    name="tiny",
    img_size=64,
    teacher=Schedule(epochs=1, lr=1e-3, batch_size=16, warmup_epochs=0),
    pretrain=Schedule(epochs=1, lr=1e-3, batch_size=16, warmup_epochs=0),
)


@pytest.fixture(autouse=True)
def small_worlds(monkeypatch, single_thread):
    """Each task's "tiny" schedule, on fewer synthetic scenes: two training steps per stage (one thread)."""
    from tasks.classification import ClassificationSchedule, ClassificationTask
    from tasks.detection import DetectionTask
    from tasks.segmentation import SegmentationTask

    small_cls = ClassificationSchedule(synthetic_train=32, synthetic_val=16, eval_batch_size=16, latency_repeats=2)
    monkeypatch.setattr(ClassificationTask, "schedules", {**ClassificationTask.schedules, "tiny": small_cls})
    for task in (SegmentationTask, DetectionTask):
        small = replace(task.schedules["tiny"], length=1, synthetic_train=4, synthetic_val=2, latency_repeats=1,
                        head_channels=32)  # a narrow UPerHead: the runner's logic, at a fraction of the cost
        monkeypatch.setattr(task, "schedules", {**task.schedules, "tiny": small})


@pytest.fixture
def cfg(tmp_path):
    return SuiteConfig(seeds=(0,), methods=("dense", "svd", "pela"), out=str(tmp_path / "runs"),
                       results=str(tmp_path / "results"), budget="tiny")


def counting_train(monkeypatch, calls):
    real_train = runner_mod.train

    def train(*a, **k):
        calls.append(k.get("desc"))
        return real_train(*a, **k)

    monkeypatch.setattr(runner_mod, "train", train)


def test_suite_end_to_end_then_resume_without_rework_and_never_from_the_store(cfg, monkeypatch, caplog):
    rows = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert [r["method"] for r in rows] == ["dense", "svd", "pela"]
    current = code_version()
    for r in rows:
        assert r["provenance"] == "synthetic" and r["task"] == "cls" and r["budget"] == "tiny"
        assert 0 <= r["metrics"]["top1"] <= 100 and r["primary_metric"] == "top1" and r["higher_is_better"] is True
        assert r["efficiency"]["params_m"] > 0 and r["efficiency"]["gflops"] > 0
        assert r["efficiency"]["input_size"] == 64
        assert r["config"]["suite"]["backbone"] == "deit_micro"
        assert r["columns"] == [["metrics.top1", "top-1 (%)", "{:.2f}"], ["metrics.top5", "top-5 (%)", "{:.2f}"]]
        assert r["options"] == "" and "finetune" not in r  # classification does not fine-tune
        assert r["code"] == current and ("commit" in r["code"] or "package" in r["code"])
        assert r["machine"]["cpu"] and r["machine"]["threads"] >= 1 and "gpu" in r["machine"]
        assert {"python", "torch", "timm"} <= set(r["versions"])
    by = {r["method"]: r for r in rows}
    assert by["svd"]["efficiency"]["params_m"] < 0.6 * by["dense"]["efficiency"]["params_m"]
    assert set(by["pela"]["loss_terms"]) == {"loss", "base", "fd"}  # the official DeiT recipe: no weight perturbation
    assert by["pela"]["recipe"] == "official"
    assert by["pela"]["ablation"] == {"fd": True, "rwp": False}
    results = Path(cfg.results)
    board = (results / "leaderboard.md").read_text()
    assert "pela" in board and (results / "leaderboard.csv").is_file() and STALE_MARK not in board
    out = Path(cfg.out)
    for kind in ("data", "teachers", "students/deit_micro", "rows/deit_micro"):
        assert all((d / MARKER).is_file() for d in (out / kind).iterdir()), kind
    assert not list(out.rglob("checkpoint.pt"))  # finished stages drop their checkpoints

    # A row of another code version is marked as such.
    stale = [dict(r) for r in ResultStore(results / "results.jsonl").rows()]
    stale[1]["code"] = {"commit": "0" * 40, "dirty": False}
    md = render_markdown(stale, current_code=current)
    marked = [ln for ln in md.splitlines() if STALE_MARK in ln and ln.startswith("| ")]
    assert len(marked) == 1 and f"{stale[1]['method']} {STALE_MARK}" in marked[0]

    # A second run trains nothing and writes no new row.
    def no_training(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(runner_mod, "train", no_training)
    again = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert [r["timestamp"] for r in again] == [r["timestamp"] for r in rows]
    lines = (results / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3

    # A fresh --out with the same results store: the store is output only, so everything is
    # computed again (the teacher and PELA train), and the store's rows are replaced, not doubled.
    calls = []
    monkeypatch.undo()
    counting_train(monkeypatch, calls)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pela_bench"):
        fresh = SuiteRunner(cfg.with_(out=str(Path(cfg.out).parent / "runs2")), budget=TINY, progress=False).run()
    assert calls == ["teacher deit_micro", "pela"]
    assert sum("pre-training for" in m for m in caplog.messages) == 1
    assert not [m for m in caplog.messages if "reus" in m]
    assert [r["method"] for r in fresh] == ["dense", "svd", "pela"]
    assert all(a["config_hash"] != b["config_hash"] for a, b in zip(fresh, rows))  # new stages (new data root)
    stored = ResultStore(results / "results.jsonl").rows()
    assert len(stored) == 3 and {r["config_hash"] for r in stored} == {r["config_hash"] for r in fresh}


def test_killed_run_resumes_at_the_unfinished_stage_from_its_checkpoint(cfg, monkeypatch, caplog, tmp_path):
    cfg = cfg.with_(checkpoint_steps=1)
    real_train = runner_mod.train
    calls = []

    def dying_train(*a, **k):
        calls.append(k.get("desc"))
        if k.get("desc") == "pela":
            on_step = k["on_step"]

            def ctrl_c_at_step_1(progress):  # the user's Ctrl-C in the middle of PELA's pre-training
                if progress > 0:
                    raise KeyboardInterrupt
                on_step(progress)

            k = {**k, "on_step": ctrl_c_at_step_1}
        return real_train(*a, **k)

    monkeypatch.setattr(runner_mod, "train", dying_train)
    with pytest.raises(KeyboardInterrupt):
        SuiteRunner(cfg, budget=TINY, progress=False).run()
    store = Path(cfg.results) / "results.jsonl"
    assert [json.loads(ln)["method"] for ln in store.read_text().splitlines()] == ["dense", "svd"]
    (pela_dir,) = (Path(cfg.out) / "students" / "deit_micro").glob("pela-*")
    assert (pela_dir / "checkpoint.pt").is_file() and not (pela_dir / MARKER).exists()

    calls.clear()
    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: (calls.append(k.get("desc")), real_train(*a, **k))[1])
    with caplog.at_level(logging.INFO, logger="pela_bench"):
        rows = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert calls == ["pela"]  # the teacher was reused, dense and svd rows kept
    assert "pela: resuming from step 1 of 2" in caplog.text
    assert [r["method"] for r in rows] == ["dense", "svd", "pela"]
    assert len(store.read_text().splitlines()) == 3
    assert (pela_dir / MARKER).is_file() and not (pela_dir / "checkpoint.pt").exists()

    # The resumed student is the one an uninterrupted run trains, to the last bit.
    whole = cfg.with_(methods=("pela",), out=str(tmp_path / "whole"), results=str(tmp_path / "whole-results"))
    (row,) = SuiteRunner(whole, budget=TINY, progress=False).run()
    (whole_dir,) = (tmp_path / "whole" / "students" / "deit_micro").glob("pela-*")
    resumed = torch.load(pela_dir / "model.pt", weights_only=True)
    uninterrupted = torch.load(whole_dir / "model.pt", weights_only=True)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert row["loss_terms"] == rows[2]["loss_terms"] and row["metrics"] == rows[2]["metrics"]


def test_changed_option_reruns_only_that_method(cfg, monkeypatch):
    SuiteRunner(cfg.with_(methods=("pela",)), budget=TINY, progress=False).run()
    calls = []
    counting_train(monkeypatch, calls)
    rows = SuiteRunner(cfg.with_(methods=("pela",), method_options={"alpha": 0.5}), budget=TINY, progress=False).run()
    assert calls == ["pela"] and rows[0]["config"]["method"]["alpha"] == 0.5
    assert rows[0]["options"] == "alpha=0.5"
    stored = {r["options"] for r in ResultStore(Path(cfg.results) / "results.jsonl").rows()}
    assert stored == {"", "alpha=0.5"}  # two rows: the options are part of a row's key


def test_a_row_does_not_depend_on_which_other_methods_ran(tmp_path, monkeypatch):
    def lora_row(methods, sub):
        cfg = SuiteConfig(seeds=(0,), methods=methods, out=str(tmp_path / "runs"), results=str(tmp_path / sub), budget="tiny")
        return [r for r in SuiteRunner(cfg, budget=TINY, progress=False).run() if r["method"] == "lora"][0]

    alone = lora_row(("lora",), "a")
    for kind in ("students", "rows"):  # force the student to train, and its row to be measured, again
        shutil.rmtree(tmp_path / "runs" / kind)
    calls = []
    counting_train(monkeypatch, calls)
    after_others = lora_row(("svd", "pela", "lora"), "b")
    assert calls == ["pela", "lora"]
    assert alone["loss_terms"] == after_others["loss_terms"]
    assert alone["metrics"] == after_others["metrics"]


def test_dense_rows_with_table9_batch_scaling_then_resume(tmp_path, monkeypatch):
    """seg rows for dense and PELA, then PELA+ (larger batch within the dense model's training memory)."""
    from tasks.segmentation import SegmentationTask

    cfg = SuiteConfig(seeds=(0,), methods=("pela", "dense", "tome", "lora"), tasks=("seg",), scale_batch=False,
                      out=str(tmp_path / "runs"), results=str(tmp_path / "results"), budget="tiny")
    first = {r["method"]: r for r in SuiteRunner(cfg, budget=TINY, progress=False).run()}
    assert set(first) == {"dense", "pela", "lora"}  # ToMe does not apply to dense tasks
    assert all("train_peak_mb" not in r["finetune"] for r in first.values())
    # A stored row keeps its fine-tune's logs but not the checkpoints that only a resume needed.
    work_dirs = [Path(r["finetune"]["work_dir"]) for r in first.values()]
    assert all(any(w.glob("*/*.log")) for w in work_dirs)
    assert not [p for w in work_dirs for p in w.iterdir() if p.suffix == ".pth" or p.name == "last_checkpoint"]

    # With --scale-batch the stored rows gain their training peak without a second fine-tune;
    # only PELA+ trains.
    fine_tunes = []
    real_run = SegmentationTask.run

    def counting_run(self, student, data, schedule, ctx):
        fine_tunes.append(ctx.train_batch)
        return real_run(self, student, data, schedule, ctx)

    monkeypatch.setattr(SegmentationTask, "run", counting_run)

    # Every peak is measured for real, but the search runs on a modelled one (16 B per parameter
    # + 300 kB per image): at these micro sizes one more image's activations outweigh what
    # factorising saves, so with real peaks no larger batch would ever fit.
    real_peak = scaling_mod.BatchScaling.peak
    measured = {}

    def modelled_peak(self, method, task, student, data, schedule, batch):
        n = count_params(student)
        measured[n, batch] = real_peak(self, method, task, student, data, schedule, batch)["peak_bytes"]
        return {"peak_bytes": 16 * n + 300_000 * batch, "method": "modelled"}

    monkeypatch.setattr(scaling_mod.BatchScaling, "peak", modelled_peak)
    rows = SuiteRunner(cfg.with_(scale_batch=True), budget=TINY, progress=False).run()
    with torch.device("meta"):
        backbone_m = count_params(create_backbone("deit_micro")) / 1e6
    assert all(v > 0 for v in measured.values())
    n_pela = max(n for n, b in measured if b == 4)
    assert measured[n_pela, 4] > measured[n_pela, 2]  # activations grow with the batch
    by = {r["method"]: r for r in rows}
    # dense first: it is the memory reference. LoRA's model is larger than the dense one, so no
    # larger batch fits and it gets no '+' row (it would only repeat its plain row).
    assert list(by) == ["dense", "pela", "pela+", "lora"]
    assert by["lora"]["finetune"]["train_peak_mb"] > by["dense"]["finetune"]["train_peak_mb"]
    assert fine_tunes == [4]  # the largest batch within the dense model's peak, capped at twice the schedule's
    for name in ("dense", "pela", "lora"):
        assert by[name]["metrics"] == first[name]["metrics"] and by[name]["timestamp"] == first[name]["timestamp"]
    for r in rows:
        assert r["task"] == "seg" and r["provenance"] == "synthetic" and r["primary_metric"] == "mIoU"
        assert 0 <= r["metrics"]["mIoU"] <= 100
        assert r["efficiency"]["params_m"] > 2 * backbone_m and r["efficiency"]["gflops"] > 0  # + neck + heads
        assert r["finetune"]["train_peak_mb"] > 0 and r["efficiency"]["input_size"] == 64
        assert ["finetune.train_batch", "train batch", "{}"] in r["columns"]
    # PELA's backbone is smaller by exactly what factorisation removed; the heads are the same.
    assert by["pela"]["efficiency"]["params_m"] < by["dense"]["efficiency"]["params_m"]
    plus = by["pela+"]["finetune"]
    assert plus["train_batch"] == fine_tunes[0] and plus["train_peak_mb"] <= plus["reference_peak_mb"]
    assert plus["reference_peak_mb"] == pytest.approx(by["dense"]["finetune"]["train_peak_mb"])
    assert by["pela"]["finetune"]["train_batch"] == 2
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "mIoU (%)" in board and "| pela+ |" in board and "train batch" in board
    stored = {r["method"]: r for r in ResultStore(tmp_path / "results" / "results.jsonl").rows()}
    assert "train_peak_mb" in stored["pela"]["finetune"]

    def no_fine_tune(*a, **k):
        raise AssertionError("a finished dense row ran again")

    monkeypatch.setattr(SegmentationTask, "run", no_fine_tune)
    again = SuiteRunner(cfg.with_(scale_batch=True), budget=TINY, progress=False).run()
    assert {r["method"] for r in again} == {"dense", "pela", "pela+", "lora"}


def test_real_task_data_after_synthetic_pretraining_is_a_synthetic_row_and_resumes(tmp_path, monkeypatch):
    """A row is real only if all its data is; it is found again under that label, and other
    tasks' schedules do not enter its config hash."""
    from tasks.detection import DetectionTask
    from tasks.segmentation import SegmentationTask
    from tasks.synthetic import MARKER_FILE, dense_world, write_segmentation

    ade = write_segmentation(tmp_path / "ade", n_train=4, n_val=2, world=dense_world(64), progress=False)
    (ade / MARKER_FILE).unlink()  # now read as real ADE20K (mmseg's class list)
    cfg = SuiteConfig(seeds=(0,), methods=("dense",), tasks=("seg",), data={"seg": str(ade)}, out=str(tmp_path / "runs"),
                      results=str(tmp_path / "results"), budget="tiny")
    (row,) = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert row["provenance"] == "synthetic"  # the teacher learnt on the synthetic world
    assert row["data"] == f"real:{ade}"

    def no_fine_tune(*a, **k):
        raise AssertionError("a finished dense row ran again")

    monkeypatch.setattr(SegmentationTask, "run", no_fine_tune)
    longer_det = replace(DetectionTask.schedules["tiny"], length=5)
    monkeypatch.setattr(DetectionTask, "schedules", {**DetectionTask.schedules, "tiny": longer_det})
    (again,) = SuiteRunner(cfg, budget=TINY, progress=False).run()
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
    cfg = SuiteConfig(seeds=(0,), methods=("dense",), tasks=("seg",), data={"seg": str(ade)}, out=str(tmp_path / "runs"),
                      results=str(tmp_path / "results"), budget="tiny")
    with pytest.raises(PelaBenchError, match=victim.name):
        SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert not (tmp_path / "runs" / "teachers").exists()


def test_check_data_reads_every_image_before_the_teacher_trains(tmp_path, monkeypatch):
    from common.errors import PelaBenchError
    from tasks.synthetic import write_classification

    data = write_classification(tmp_path / "data", n_train=32, n_val=16, progress=False)
    victim = sorted((data / "val").rglob("*.png"))[-1]  # a validation image: training would not read it first
    victim.write_bytes(b"\x89PNG truncated")

    def no_training(*a, **k):
        raise AssertionError("the teacher trained before the data was checked")

    monkeypatch.setattr(runner_mod, "train", no_training)
    cfg = SuiteConfig(seeds=(0,), methods=("dense",), data={"cls": str(data)}, check_data=True, out=str(tmp_path / "runs"),
                      results=str(tmp_path / "results"), budget="tiny")
    with pytest.raises(PelaBenchError, match=f"cannot read image .*{victim.name}"):
        SuiteRunner(cfg, budget=TINY, progress=False).run()


def test_several_seeds_share_one_teacher_and_give_one_row_per_seed(cfg, monkeypatch):
    calls: list[str] = []
    counting_train(monkeypatch, calls)
    cfg = cfg.with_(methods=("dense", "svd_ft"), seeds=(0, 1))
    rows = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert [(r["method"], r["seed"], r["teacher_seed"]) for r in rows] == \
        [("dense", 0, 0), ("svd_ft", 0, 0), ("dense", 1, 0), ("svd_ft", 1, 0)]
    assert calls == ["teacher deit_micro", "svd_ft", "svd_ft"]  # the teacher trains once; each seed's student
    by = {(r["method"], r["seed"]): r for r in rows}
    # The uncompressed teacher does not train: every seed scores it the same; a pre-trained student differs.
    assert by["dense", 0]["metrics"] == by["dense", 1]["metrics"]
    assert by["svd_ft", 0]["config"]["student_hash"] != by["svd_ft", 1]["config"]["student_hash"]
    assert by["svd_ft", 0]["loss_terms"] != by["svd_ft", 1]["loss_terms"]
    assert len(ResultStore(Path(cfg.results) / "results.jsonl").rows()) == 4
    md = (Path(cfg.results) / "leaderboard.md").read_text()
    assert "seeds 0, 1 · teacher seed 0" in md and "| n | vs dense |" in md and "| 2 | ref |" in md
    # A later run of one more seed reuses the teacher and the first seeds' rows.
    calls.clear()
    SuiteRunner(cfg.with_(seeds=(0, 1, 2)), budget=TINY, progress=False).run()
    assert calls == ["svd_ft"]


def test_a_ratio_sweep_keeps_each_ratio_as_its_own_row_beside_the_preset(cfg):
    cfg = cfg.with_(methods=("dense", "svd", "svd_ft"))
    preset = SuiteRunner(cfg, budget=TINY, progress=False).run()
    swept = SuiteRunner(cfg.with_(ratios=(2.0, 5.0)), budget=TINY, progress=False).run()
    # dense has no ratio: one row however many ratios; each factorising method one row per ratio
    assert [(r["method"], r["options"], r["ratio"]) for r in swept] == [
        ("dense", "", None), ("svd", "ratio=2.0", 2.0), ("svd", "ratio=5.0", 5.0),
        ("svd_ft", "ratio=2.0", 2.0), ("svd_ft", "ratio=5.0", 5.0)]
    params = {(r["method"], r["ratio"]): r["efficiency"]["params_m"] for r in preset + swept}
    assert params["svd", 5.0] < params["svd", 3.0] < params["svd", 2.0] < params["dense", None]
    stored = ResultStore(Path(cfg.results) / "results.jsonl").rows()
    assert len(stored) == 3 + 4  # the sweep sits beside the preset rows (deit_micro's ratio 3), replacing none
    for row in stored:  # Table 8's step cost and Fig. 2's similarity, on every classification row
        assert row["efficiency"]["train_step_ms"] > 0 and row["efficiency"]["train_batch"] == 16
        sims = row["analysis"]["feature_similarity"]
        assert len(sims["classes"]) == len(sims["within_class"]) == len(sims["to_dense"]) == 16
    dense = next(r for r in stored if r["method"] == "dense")
    assert dense["analysis"]["feature_similarity"]["to_dense"] == pytest.approx([1.0] * 16, abs=1e-5)


def test_each_recipe_is_its_own_row_and_records_what_it_trained_with(cfg):
    cfg = cfg.with_(methods=("dense", "svd_ft", "pela"), recipes=("official", "paper"))
    rows = SuiteRunner(cfg, budget=TINY, progress=False).run()
    # dense takes no recipe, and svd_ft fixes its own (no term to set): one row each; pela one row per
    # recipe, the recipe a field and not an option
    assert [(r["method"], r.get("recipe"), r["options"]) for r in rows] == [
        ("dense", None, ""), ("svd_ft", None, ""), ("pela", "official", ""), ("pela", "paper", "")]
    official, paper = rows[2], rows[3]
    # deit_micro is a ViT: the official DeiT scripts train without the weight perturbation
    assert official["config"]["settings"]["beta"] == 0.0 and official["ablation"] == {"fd": True, "rwp": False}
    assert "rwp" not in official["loss_terms"] and "rwp" in paper["loss_terms"]
    assert paper["config"]["settings"] == {"alpha": 1.0, "beta": 1.0, "epsilon": 1e-3, "rwp_form": "linear",
                                           "rwp_reduce": "sum", "fd_targets": "blocks"}
    assert official["config"]["student_hash"] != paper["config"]["student_hash"]
    stored = ResultStore(Path(cfg.results) / "results.jsonl").rows()
    assert sorted(r.get("recipe") or "" for r in stored) == ["", "", "official", "paper"]  # neither replaced the other
    md = (Path(cfg.results) / "leaderboard.md").read_text()
    assert "| recipe |" in md and "recipe=paper" not in md.split("| recipe |")[0]
    assert "paper/recipes.md" in md


def test_cpu_sized_backbones_take_the_tasks_small_schedules(tmp_path):
    from tasks.segmentation import SEG_SCHEDULES, SEG_SMALL_SCHEDULES

    def runner(backbone: str) -> SuiteRunner:
        cfg = SuiteConfig(backbone=backbone, tasks=("seg",), methods=("dense",), seeds=(0,),
                          out=str(tmp_path / "runs"), results=str(tmp_path / "results"))
        return SuiteRunner(cfg, progress=False)

    micro, base = runner("deit_micro"), runner("deit_base")
    assert micro.small and not base.small
    assert micro.schedule(micro.tasks["seg"]) is SEG_SMALL_SCHEDULES["smoke"]
    assert base.schedule(base.tasks["seg"]) is SEG_SCHEDULES["smoke"]


def test_a_sweep_of_starts_shares_one_calibration_stage_and_keeps_each_point_as_a_row(cfg, monkeypatch):
    import methods.calibration as calib_mod

    collected = []
    real = calib_mod.collect_calibration
    monkeypatch.setattr(runner_mod, "collect_calibration", lambda *a, **k: collected.append(1) or real(*a, **k))
    cfg = cfg.with_(methods=("svd", "pela"), sweeps={"init": ("svd", "whitened"), "params": (0.5,)},
                    method_options={"alloc": "budget", "calib_batches": 1})
    runner = SuiteRunner(cfg, budget=TINY, progress=False)
    assert [j.label for j in runner.jobs()] == [
        "svd init=svd params=0.5 seed 0", "svd init=whitened params=0.5 seed 0",
        "pela init=svd params=0.5 seed 0", "pela init=whitened params=0.5 seed 0"]
    rows = runner.run()
    assert [(r["method"], r["options"]) for r in rows] == [
        ("svd", 'alloc="budget" calib_batches=1 params=0.5'),
        ("svd", 'alloc="budget" calib_batches=1 init="whitened" params=0.5'),
        ("pela", 'alloc="budget" calib_batches=1 params=0.5'),
        ("pela", 'alloc="budget" calib_batches=1 init="whitened" params=0.5')]
    assert collected == [1]  # one collection, read back by the second whitened student
    stages = list((Path(cfg.out) / "calibration" / "deit_micro").glob("inputs-*/calibration.pt"))
    assert len(stages) == 1
    dense_m = count_params(create_backbone("deit_micro")) / 1e6
    for r in rows:
        assert r["ratio"] is None and r["efficiency"]["params_m"] <= 0.5 * dense_m + 1e-9
    white, plain = rows[1], rows[0]
    assert white["config"]["student_hash"] != plain["config"]["student_hash"]
    SuiteRunner(cfg, budget=TINY, progress=False).run()  # everything reused: no second collection
    assert collected == [1]
    # The untrained whitened student's stage follows its calibration batches, though it trains nothing.
    from methods import create_method

    whitened = create_method("svd", init="whitened", alloc="budget", params=0.5, calib_batches=1)
    same = SuiteRunner(cfg, budget=TINY, progress=False)
    other = SuiteRunner(cfg.with_(global_batch=8), budget=TINY, progress=False)
    assert same.student_stage(whitened, "t").hash != other.student_stage(whitened, "t").hash
    plain = create_method("svd", params=0.5)  # data-free: no calibration in its stage
    assert same.student_stage(plain, "t").hash == other.student_stage(plain, "t").hash
