"""The grid through submitit's local executor: the rows of a plain run, and a preempted job that requeues and
resumes from its in-stage checkpoint. (Slurm itself is not here; the same jobs and executor parameters go to it.)"""

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch

from benchmark.config import BUDGET_PRESETS, Schedule, SuiteConfig
from benchmark.launch import LaunchConfig, SuiteJob, executor, launch
from benchmark.runner import GridJob, SuiteRunner
from benchmark.store import ResultStore, row_id
from common.errors import PelaBenchError

TINY = BUDGET_PRESETS["tiny"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' processes, as this one: the same float order
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cfg(tmp_path: Path, name: str, **kw) -> SuiteConfig:
    return SuiteConfig(backbone="deit_micro", methods=("dense", "pela"), tasks=("cls",), seeds=(0, 1),
                       budget="tiny", device="cpu", out=str(tmp_path / name / "runs"),
                       results=str(tmp_path / name / "results"), **kw)


def _stored(cfg: SuiteConfig) -> dict[str, dict]:
    rows = [json.loads(line) for line in (Path(cfg.results) / "results.jsonl").read_text().splitlines()]
    ids = [row_id(r) for r in rows]
    assert len(ids) == len(set(ids))
    return dict(zip(ids, rows))


def test_local_launcher_writes_the_rows_of_a_plain_run(tmp_path):
    plain = _cfg(tmp_path, "plain")
    SuiteRunner(plain, progress=False).run()
    jobs_cfg = _cfg(tmp_path, "jobs")
    assert [j.label for j in SuiteRunner(jobs_cfg, progress=False).jobs()] == [
        "dense seed 0", "pela seed 0", "dense seed 1", "pela seed 1"]
    ids = launch(jobs_cfg, LaunchConfig(launcher="local"))
    ResultStore(Path(jobs_cfg.results) / "results.jsonl").merge()
    a, b = _stored(plain), _stored(jobs_cfg)
    assert sorted(ids) == sorted(a) == sorted(b) and len(a) == 4
    for rid in a:
        assert a[rid]["metrics"] == b[rid]["metrics"]
        assert a[rid]["config_hash"] == b[rid]["config_hash"]
        assert a[rid]["loss_terms"] == b[rid]["loss_terms"]
        folders = {"out", "results"}  # the two runs' own folders
        assert ({k: v for k, v in a[rid]["config"]["suite"].items() if k not in folders}
                == {k: v for k, v in b[rid]["config"]["suite"].items() if k not in folders})  # the whole grid's
    # One job prepared the teacher, four followed it, each with its log.
    logs = sorted(Path(jobs_cfg.out, "submitit").glob("*/*_log.err"))
    assert len(logs) == 5
    assert sum("teacher: training" in p.read_text() for p in logs) == 1


def test_a_preempted_job_requeues_and_resumes_from_its_checkpoint(tmp_path):
    budget = replace(TINY, pretrain=Schedule(epochs=12, lr=1e-3, batch_size=32, warmup_epochs=0.2))
    cfg = replace(_cfg(tmp_path, "preempt"), methods=("pela",), seeds=(0,), checkpoint_steps=1)
    runner = SuiteRunner(cfg, budget=budget, progress=False)
    teacher, teacher_hash = runner.prepare()  # in this process: the job below is the student's alone
    job = GridJob("pela", 0)
    method = __import__("methods").create_method("pela")
    stage_dir = runner.student_stage(method, teacher_hash).dir
    ex = executor(cfg, LaunchConfig(launcher="local"))
    handle = ex.submit(SuiteJob(cfg, job, budget=budget))
    deadline = time.monotonic() + 240
    while not (stage_dir / "checkpoint.pt").is_file():
        assert time.monotonic() < deadline and handle.state not in ("FINISHED", "FAILED"), handle.state
        time.sleep(0.1)
    # What Slurm does before preempting a job or at its time limit: USR2 to the job's task, on which
    # submitit checkpoints (`SuiteJob.checkpoint`) and requeues it.
    for task in psutil.Process(handle._process.pid).children():
        task.send_signal(signal.SIGUSR2)
    result = handle.result()
    assert len(result) == 1
    log = Path(handle.paths.stderr).read_text()
    assert "Requeued job" in log and "resuming from step" in log, log[-3000:]
    assert (stage_dir / "stage.json").is_file() and not (stage_dir / "checkpoint.pt").exists()


def test_launch_options_are_checked_before_any_job():
    with pytest.raises(PelaBenchError, match="--nodes must be 1"):
        LaunchConfig(launcher="local", nodes=2).check()
    with pytest.raises(PelaBenchError, match="set --gpus-per-job"):
        LaunchConfig(launcher="slurm", nodes=2).check()
    with pytest.raises(PelaBenchError, match="choose none, local or slurm"):
        LaunchConfig(launcher="pbs").check()


def test_slurm_jobs_get_the_partition_gpus_and_time_limit(tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")  # submitit checks that it is on a Slurm host
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    ex = executor(SuiteConfig(out="/tmp/unused"), LaunchConfig(
        launcher="slurm", partition="gpu", account="lab", gpus_per_job=8, nodes=2, time_min=90, max_parallel=4,
        slurm_extra={"qos": "high"}))
    params = ex._executor.parameters
    assert params["partition"] == "gpu" and params["account"] == "lab" and params["gpus_per_node"] == 8
    assert params["ntasks_per_node"] == 8 and params["nodes"] == 2 and params["time"] == 90
    assert params["array_parallelism"] == 4 and params["additional_parameters"] == {"qos": "high"}
    script = ex._executor._make_submission_file_text("python -m job", "uid")
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --gpus-per-node=8" in script
    assert "#SBATCH --signal=USR2@" in script  # the preemption / time-limit signal the jobs requeue on
