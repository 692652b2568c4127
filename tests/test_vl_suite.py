"""The suite on the ALBEF-style backbone: teacher on captions, PELA, retrieval rows, resume (tiny budget)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from benchmark.config import Budget, Schedule, SuiteConfig
from benchmark.runner import SuiteRunner
from benchmark.store import ResultStore
from common.errors import PelaBenchError

TINY = Budget(name="tiny", img_size=64,
              teacher=Schedule(epochs=1, lr=1e-3, batch_size=16, warmup_epochs=0),
              pretrain=Schedule(epochs=1, lr=1e-3, batch_size=16, warmup_epochs=0))


@pytest.fixture(autouse=True)
def small_worlds(monkeypatch, single_thread):
    from tasks.retrieval import RetrievalTask
    from tasks.vlp import VLPretraining

    monkeypatch.setattr(VLPretraining, "schedules",
                        {**VLPretraining.schedules, "tiny": replace(VLPretraining.schedules["tiny"], synthetic_train=32)})
    small = replace(RetrievalTask.schedules["tiny"], synthetic_train=16, synthetic_test=8, latency_repeats=1)
    monkeypatch.setattr(RetrievalTask, "schedules", {**RetrievalTask.schedules, "tiny": small})


def test_albef_rows_for_pela_and_baselines_then_resume(tmp_path, monkeypatch):
    cfg = SuiteConfig(backbone="albef_tiny", tasks=("retrieval",), methods=("dense", "svd", "pela", "pela_no_fd"),
                      out=str(tmp_path / "runs"), results=str(tmp_path / "results"), budget="tiny",
                      checkpoint_steps=1)
    rows = {r["method"]: r for r in SuiteRunner(cfg, budget=TINY, progress=False).run()}
    assert set(rows) == {"dense", "svd", "pela", "pela_no_fd"}
    for r in rows.values():
        assert r["task"] == "retrieval" and r["primary_metric"] == "r_mean" and r["provenance"] == "synthetic"
        assert set(r["metrics"]) == {"tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "r_mean"}
        assert r["finetune"]["train_batch"] == 16 and r["efficiency"]["gflops"] > 0
        # Fine-tunes checkpoint every step here; a stored row keeps none of it.
        assert Path(r["finetune"]["work_dir"]).is_dir() and not (Path(r["finetune"]["work_dir"]) / "checkpoint.pt").exists()
    # The retrieval model (momentum copies counted, no MLM head) shrinks by PELA's preset, ratio 3.
    assert rows["pela"]["efficiency"]["params_m"] < 0.5 * rows["dense"]["efficiency"]["params_m"]
    assert rows["pela"]["loss_terms"].keys() >= {"base", "fd", "rwp"} and "fd" not in rows["pela_no_fd"]["loss_terms"]
    assert rows["pela"]["ablation"] == {"fd": True, "rwp": True}
    teacher = next((tmp_path / "runs" / "teachers").glob("albef_tiny-*/stage.json")).read_text()
    assert '"itc"' in teacher and '"mlm"' in teacher  # the teacher logs each of ALBEF's terms
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "TR@1" in board and "R mean" in board
    # A second run reuses every stage: no training at all.
    import benchmark.runner as runner_mod

    monkeypatch.setattr(runner_mod, "train", lambda *a, **k: pytest.fail("a finished stage trained again"))
    again = SuiteRunner(cfg, budget=TINY, progress=False).run()
    assert {r["method"]: r["metrics"] for r in again} == {m: r["metrics"] for m, r in rows.items()}
    assert len(ResultStore(tmp_path / "results" / "results.jsonl").rows()) == 4


def test_vision_only_backbone_refuses_vl_tasks_before_any_work(tmp_path):
    cfg = SuiteConfig(backbone="deit_micro", tasks=("retrieval",), methods=("dense",), out=str(tmp_path / "runs"),
                      results=str(tmp_path / "results"), budget="tiny")
    with pytest.raises(PelaBenchError, match="needs a vision-language backbone"):
        SuiteRunner(cfg, budget=TINY, progress=False)
    with pytest.raises(PelaBenchError, match="only pre-trains backbones"):
        SuiteRunner(replace(cfg, backbone="albef_tiny", tasks=("vlp",)), budget=TINY, progress=False)
    assert not (tmp_path / "runs").exists()
