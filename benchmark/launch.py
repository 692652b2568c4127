"""The suite's grid as jobs, on Slurm or as local processes, through submitit.

One job prepares what every student shares (each task's data, then the teacher);
one job per student (`benchmark.runner.GridJob`: a method instance at one seed,
with all of its rows) follows it, on Slurm as a job array that depends on the
first job (``afterok``). Jobs share `--out` and `--results`: the stage cache gives
each job its own stages (the shared ones are finished before any student starts),
and the results store takes concurrent rows without locks (`benchmark.store`).

A job killed by preemption or by its time limit is requeued by submitit
(`SuiteJob.checkpoint`) and starts again from the stage cache: finished stages
are reused and the unfinished one resumes from its last in-stage checkpoint
(`--checkpoint-minutes`, `--checkpoint-steps`). With several GPUs per job, the
job's tasks are one process per GPU and train as `torchrun` would
(`submitit.helpers.TorchDistributedEnvironment`).

``--launcher local`` runs the same jobs on this machine (`max_parallel` at a time;
one by default, so their timings are those of a plain run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import Budget, SuiteConfig
from benchmark.plugins import import_plugin
from benchmark.runner import GridJob
from common.errors import PelaBenchError

log = logging.getLogger("pela_bench")

LAUNCHERS = ("none", "local", "slurm")


@dataclass(frozen=True)
class LaunchConfig:
    launcher: str = "local"  # "local" or "slurm"
    partition: str | None = None
    account: str | None = None
    gpus_per_job: int = 0  # per node; one process (Slurm task) per GPU, one process when 0
    nodes: int = 1
    time_min: int = 240  # each job's time limit; a job that reaches it is requeued and resumes
    cpus_per_task: int | None = None
    max_parallel: int = 1  # local: jobs at once; Slurm: the array's parallelism (0: no limit)
    folder: str | None = None  # submitit's logs and pickles (default: <out>/submitit)
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"qos": "high", "constraint": "a100"}

    def check(self) -> None:
        if self.launcher not in ("local", "slurm"):
            raise PelaBenchError(f"--launcher {self.launcher!r}: choose none, local or slurm")
        if self.gpus_per_job < 0 or self.nodes < 1 or self.time_min < 1 or self.max_parallel < 0:
            raise PelaBenchError("--gpus-per-job >= 0, --nodes >= 1, --time-min >= 1 and --max-parallel >= 0 please")
        if self.launcher == "local" and self.nodes != 1:
            raise PelaBenchError("--launcher local runs on this machine: --nodes must be 1")
        if self.nodes > 1 and self.gpus_per_job == 0:
            raise PelaBenchError("--nodes > 1 trains one job over several nodes' GPUs: set --gpus-per-job")


class SuiteJob:
    """What one job runs: the shared stages (`job` None) or one student's rows. Picklable."""

    def __init__(self, cfg: SuiteConfig, job: GridJob | None, *, budget: Budget | None = None,
                 imports: tuple[str, ...] = ()) -> None:
        self.cfg, self.job, self.budget, self.imports = cfg, job, budget, imports

    def __call__(self) -> list[str]:
        import submitit

        from benchmark.runner import SuiteRunner
        from benchmark.store import row_id

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one process per GPU: the variables torchrun would set
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        for spec in self.imports:
            import_plugin(spec)
        runner = SuiteRunner(self.cfg, budget=self.budget, progress=False)
        if self.job is None:
            runner.prepare()
            return []
        log.info("job %s: %s", env.job_id, self.job.label)
        return [row_id(r) for r in runner.run_job(self.job)]

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or timed out: run again; the stage cache and in-stage checkpoints carry the progress."""
        import submitit

        return submitit.helpers.DelayedSubmission(SuiteJob(self.cfg, self.job, budget=self.budget,
                                                           imports=self.imports), *args, **kwargs)


def executor(cfg: SuiteConfig, lc: LaunchConfig) -> Any:
    import submitit

    folder = Path(lc.folder or Path(cfg.out) / "submitit") / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm" if lc.launcher == "slurm" else "local")
    params: dict[str, Any] = dict(name="pela-bench", timeout_min=lc.time_min, nodes=lc.nodes,
                                  tasks_per_node=max(1, lc.gpus_per_job))
    if lc.gpus_per_job:
        params["gpus_per_node"] = lc.gpus_per_job
    if lc.launcher == "slurm":
        params.update({k: v for k, v in {"slurm_partition": lc.partition, "slurm_account": lc.account,
                                         "cpus_per_task": lc.cpus_per_task}.items() if v is not None})
        if lc.max_parallel:
            params["slurm_array_parallelism"] = lc.max_parallel
        if lc.slurm_extra:
            params["slurm_additional_parameters"] = dict(lc.slurm_extra)
    ex.update_parameters(**params)
    return ex


def launch(cfg: SuiteConfig, lc: LaunchConfig, *, budget: Budget | None = None,
           imports: tuple[str, ...] = ()) -> list[str]:
    """Run the grid as jobs and wait for them; the ids of the rows they wrote.

    Rows of the jobs that finished are in the store whatever happens to the others; a failed
    job is an error naming its log, raised once every other job has ended.
    """
    from benchmark.runner import SuiteRunner

    lc.check()
    jobs = SuiteRunner(cfg, budget=budget, progress=False).jobs()
    ex = executor(cfg, lc)
    prep = ex.submit(SuiteJob(cfg, None, budget=budget, imports=imports))
    log.info("%s: job %s prepares the data and the teacher; %d student jobs follow", lc.launcher, prep.job_id,
             len(jobs))
    submitted: list[tuple[GridJob, Any]] = []
    if lc.launcher == "slurm":
        extra = {**lc.slurm_extra, "dependency": f"afterok:{prep.job_id}"}
        ex.update_parameters(slurm_additional_parameters=extra)
        with ex.batch():
            handles = [ex.submit(SuiteJob(cfg, job, budget=budget, imports=imports)) for job in jobs]
        submitted = list(zip(jobs, handles))
        log.info("slurm: array of %d jobs submitted; logs under %s", len(jobs), Path(ex.folder).parent)
    else:
        _result(prep, "data and teacher")
        width = lc.max_parallel or len(jobs)
        for start in range(0, len(jobs), width):
            wave = [(job, ex.submit(SuiteJob(cfg, job, budget=budget, imports=imports)))
                    for job in jobs[start:start + width]]
            for job, handle in wave:
                try:
                    handle.result()
                except Exception:  # reported with the rest below
                    pass
            submitted += wave
    if lc.launcher == "slurm":
        _result(prep, "data and teacher")
    row_ids: list[str] = []
    failed = []
    for job, handle in submitted:
        try:
            row_ids += _result(handle, job.label)
        except PelaBenchError as exc:
            failed.append(str(exc))
    if failed:
        raise PelaBenchError(f"{len(failed)} of {len(submitted)} jobs failed (the others' rows are stored):\n"
                             + "\n".join(failed))
    return row_ids


def _result(handle: Any, label: str) -> Any:
    try:
        result = handle.result()
    except Exception as exc:
        last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        raise PelaBenchError(f"job {handle.job_id} ({label}) failed: {last[0]}; log: {handle.paths.stderr}") from None
    log.info("job %s (%s) finished", handle.job_id, label)
    return result
