"""The suite through its contracts, end to end at the `tiny` budget: a task added from its own
file, stages that survive SIGKILL at random moments, and a teacher resumed from its checkpoint."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = [sys.executable, str(ROOT / "tools" / "run_suite.py"), "--quiet", "--budget", "tiny", "--seed", "0"]


def _rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]


def test_a_task_in_its_own_file_runs_through_the_cli(tmp_path):
    r = subprocess.run([*SUITE, "--import", str(ROOT / "tests" / "plugins" / "flipped_cls.py"),
                        "--tasks", "flipped_cls", "--methods", "dense,svd,pela",
                        "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(tmp_path / "results")
    assert sorted(row["method"] for row in rows) == ["dense", "pela", "svd"]
    assert all(row["task"] == "flipped_cls" and set(row["metrics"]) == {"flip_top1"} for row in rows)
    assert all(0 <= row["metrics"]["flip_top1"] <= 100 for row in rows)
    pela = next(row for row in rows if row["method"] == "pela")
    assert pela["efficiency"]["params_m"] < next(row for row in rows if row["method"] == "dense")["efficiency"]["params_m"]
    assert "pela: pre-training" in r.stderr  # the method really trained before the task evaluated it
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "flipped top-1 (%)" in board and "### flipped_cls" in board


def test_sigkill_at_random_moments_leaves_every_row_once(tmp_path):
    """Kill the suite three times at random moments; the fourth run finishes with the rows of a clean run."""
    args = ["--methods", "dense,svd,pela,tinybert", "--checkpoint-steps", "1"]
    clean = subprocess.run([*SUITE, *args, "--out", str(tmp_path / "clean"), "--results", str(tmp_path / "clean_res")],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert clean.returncode == 0, clean.stderr[-3000:]
    out, results = tmp_path / "runs", tmp_path / "results"
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([*SUITE, *args, "--out", str(out), "--results", str(results)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(rng.uniform(4, 12))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    final = subprocess.run([*SUITE, *args, "--out", str(out), "--results", str(results)],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert final.returncode == 0, final.stderr[-3000:]
    rows = _rows(results)
    assert sorted(r["method"] for r in rows) == ["dense", "pela", "svd", "tinybert"]  # each exactly once
    expected = {r["method"]: r["metrics"] for r in _rows(tmp_path / "clean_res")}
    assert {r["method"]: r["metrics"] for r in rows} == expected


def test_a_killed_teacher_resumes_from_its_checkpoint(tmp_path, monkeypatch, caplog):
    import benchmark.runner as runner_module
    from benchmark.config import SuiteConfig

    def config(out: Path) -> SuiteConfig:
        return SuiteConfig(seeds=(0,), methods=("dense",), out=str(out), results=str(out / "results"), budget="tiny",
                           checkpoint_steps=2, device="cpu")

    reference = runner_module.SuiteRunner(config(tmp_path / "ref"), progress=False)
    ref_teacher, _ = reference.teacher()

    real_train = runner_module.train

    def killed_at_step_5(*args, on_step=None, **kwargs):
        total = {"steps": 0}

        def hook(progress):
            total["steps"] += 1
            if total["steps"] > 5:
                raise KeyboardInterrupt("killed")
            if on_step is not None:
                on_step(progress)
        return real_train(*args, on_step=hook, **kwargs)

    monkeypatch.setattr(runner_module, "train", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        runner_module.SuiteRunner(config(tmp_path / "run"), progress=False).teacher()
    monkeypatch.setattr(runner_module, "train", real_train)
    with caplog.at_level(logging.INFO, logger="pela_bench"):
        teacher, _ = runner_module.SuiteRunner(config(tmp_path / "run"), progress=False).teacher()
    assert "resuming from step 4 of" in caplog.text
    assert not list((tmp_path / "run").rglob("checkpoint.pt"))  # dropped once the stage finished
    for a, b in zip(teacher.state_dict().values(), ref_teacher.state_dict().values()):
        assert torch.equal(a, b)
