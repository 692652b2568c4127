"""The suite runner: data -> teacher -> compress + pre-train -> each task's rows -> leaderboard.

Every stage goes through `benchmark.stages.StageCache`: its output is written
under `cfg.out` next to the spec that produced it and reused when that spec's
hash matches, so a killed run resumes at the first unfinished stage (training
stages from their last checkpoint) and never writes a row twice. The runner
knows no task, method or backbone by name: it asks their contracts.

The grid is a list of `GridJob`s, one per student (a method instance at one seed)
with all of its rows; `run` does them in turn, and `benchmark.launch` hands them
to Slurm or local processes, each job first finding the shared data and teacher
finished. Under torchrun every rank runs every stage (`common.distributed`);
rank 0 alone writes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from backbones import Backbone, create_backbone
from common import distributed
from benchmark.batch_scaling import BatchScaling
from benchmark.config import (LARGE_PARAMS, REFERENCE_METHOD, Budget, Schedule, SuiteConfig, method_grid,
                              method_options_for, resolve_device, validate)
from benchmark.efficiency import measure_all, measure_train_step
from benchmark.provenance import code_version, machine, versions
from benchmark.stages import Stage, StageCache
from benchmark.store import ResultStore
from benchmark.tables import write_leaderboard
from benchmark.trainer import Checkpointing, Layout, OptimConfig, train
from common.batch import move_to
from common.errors import PelaBenchError
from common.io import atomic_save_torch, atomic_write_text
from common.params import count_params
from common.seed import seed_everything
from methods import Method, create_method
from methods.calibration import Calibration, collect_calibration
from methods.lowrank import eligible_linears
from tasks import RunContext, Task, TaskData, canonical_task_name, create_task
from tasks.base import trainable_copy

log = logging.getLogger("pela_bench")

CHECKPOINT = "checkpoint.pt"
WORK_DIR = "work"  # a row's folder for the task's own files (`RunContext.work_dir`)


@dataclass(frozen=True)
class GridJob:
    """One student of the grid: method `method` at (`ratio`, `recipe`) and student seed `seed`, with every
    row it has (each task, each variant). Picklable: it is what a launcher ships to a job."""

    method: str
    seed: int
    ratio: float | None = None
    recipe: str | None = None
    sweep: tuple[tuple[str, Any], ...] = ()  # this student's point of the `--sweep` grid

    @property
    def label(self) -> str:
        pairs = (("ratio", self.ratio), ("recipe", self.recipe), *self.sweep)
        extra = "".join(f" {k}={v}" for k, v in pairs if v is not None)
        return f"{self.method}{extra} seed {self.seed}"


@dataclass
class StudentResult:
    model: nn.Module
    stage_hash: str
    loss_terms: dict[str, float]
    train_seconds: float


def _optim(s: Schedule) -> OptimConfig:
    return OptimConfig(epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay,
                       warmup_epochs=s.warmup_epochs, clip_grad=s.clip_grad)


class SuiteRunner:
    def __init__(self, cfg: SuiteConfig, *, budget: Budget | None = None, progress: bool = True) -> None:
        """`budget` replaces the named preset (custom schedules, tests); it is hashed like one."""
        validate(cfg)
        self.world = distributed.init(cfg.device)
        if not self.world.main:  # rank 0 speaks for the job; the others only warn
            log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
        if self.world.size > 1 and cfg.scale_batch:
            raise PelaBenchError("--scale-batch measures one process's training memory (Table 9): run it without "
                                 "torchrun")
        self.cfg = cfg
        budget = budget or cfg.budget_preset()
        if cfg.global_batch is not None:  # the teacher's and every pre-training's batch per optimiser step
            budget = replace(budget, **{k: replace(getattr(budget, k), batch_size=cfg.global_batch)
                                        for k in ("teacher", "pretrain", "teacher_large", "pretrain_large")
                                        if getattr(budget, k) is not None},
                             pretrain_on={t: replace(v, batch_size=cfg.global_batch)
                                          for t, v in budget.pretrain_on.items()})
        self.budget = budget
        self.cache = StageCache(cfg.out)
        self.store = ResultStore(Path(cfg.results) / "results.jsonl")
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (`distributed.init`)
        self.progress = progress and self.world.main
        self.layout = Layout(micro_batch=cfg.micro_batch, compile=cfg.compile, channels_last=cfg.channels_last)
        if cfg.workers is not None:
            self.workers = cfg.workers
        elif self.device.type == "cpu":
            # One loader worker on CPU overlaps image decoding with compute; more would only
            # take cores from the compute threads.
            self.workers = 1
        else:  # the node's cores shared by its ranks
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            self.workers = max(1, min(8, (os.cpu_count() or 1) // per_node))
        with torch.device("meta"):  # the metadata and size pick the schedules; no weights needed
            meta = create_backbone(cfg.backbone)
        self.info = meta.info
        self.backbone_params = count_params(meta)
        self.small = self.backbone_params <= LARGE_PARAMS  # picks the tasks' schedules for small backbones
        self.img_size = self.budget.img_size or self.info.img_size
        self.tasks: dict[str, Task] = {}
        for name in cfg.tasks:
            task = create_task(name)
            if not task.metrics:
                raise PelaBenchError(f"task {task.name!r} only pre-trains backbones; it has no rows of its own")
            task.check_backbone(self.info)
            task.bind(self.info)
            self.tasks.setdefault(task.name, task)
        self.pretrain_task = create_task(self.info.pretrain_task)
        self.pretrain_task.bind(self.info)
        self.data_roots = {canonical_task_name(k): v for k, v in cfg.data.items()}
        self.seed = cfg.seeds[0]  # the student seed being run (`run` steps through `cfg.seeds`)
        # Memory peaks (Table 9) are measured once per task, under the first seed.
        self.scaling = BatchScaling(self.device, cfg.seeds[0])
        self._data: dict[str, TaskData] = {}
        self._teacher: Backbone | None = None  # set by `prepare`; the reference of analyses that compare with it
        self._teacher_hash = ""

    def schedule(self, task: Task) -> Any:
        """The task's schedule under this run's budget, for this backbone's size."""
        return task.schedule(self.budget.name, self.small)

    # -- stage 0: data -------------------------------------------------------------------
    def data(self, task: Task) -> TaskData:
        """The task's data set: the user's root, or the synthetic world generated once under `out`."""
        if task.name in self._data:
            return self._data[task.name]
        schedule = self.schedule(task)
        root = self.data_roots.get(task.name)
        if root is None:
            spec = {"task": task.name, "seed": self.cfg.teacher_seed, **task.synthetic_spec(schedule, self.budget.img_size)}
            stage = self.cache.stage("data", f"synthetic-{task.name}", spec)

            def write(folder: Path) -> dict[str, Any]:
                log.info("generating synthetic %s data in %s", task.name, folder)
                task.write_synthetic(folder, spec, self.cfg.teacher_seed, self.progress)
                return {}

            self.cache.run(stage, write, collective=False)
            root = stage.dir
        data = task.load(Path(root), schedule, self.img_size)
        if self.cfg.check_data:
            counts = task.check_data(data, self.progress)
            log.info("%s: checked every file of %s (%s)", task.name, data.root,
                     ", ".join(f"{k}: {v}" for k, v in counts.items()) or "nothing to read")
        self._data[task.name] = data
        return data

    def data_id(self, task: Task) -> str:
        """What a stage's hash records of its data: the synthetic world's own hash, or the user's resolved path."""
        data = self.data(task)
        if task.name not in self.data_roots:
            return f"synthetic:{Path(data.root).name}"
        return f"{data.provenance}:{Path(data.root).resolve()}"

    def provenance(self, task: Task) -> str:
        """A row is real only if all the data behind it (pre-training and task) is real."""
        both = {self.data(self.pretrain_task).provenance, self.data(task).provenance}
        return "real" if both == {"real"} else "synthetic"

    def _checkpointing(self, folder: Path, method: Method | None = None) -> Checkpointing:
        extra = (method.state_dict, method.load_state_dict) if method is not None else None
        return Checkpointing(folder / CHECKPOINT, every_steps=self.cfg.checkpoint_steps,
                             every_seconds=60 * self.cfg.checkpoint_minutes, extra_state=extra)

    def _train(self, model: nn.Module, loss: Callable, sched: Schedule, folder: Path, desc: str, seed: int,
               method: Method | None = None, on_step: Callable[[float], None] | None = None) -> list[dict]:
        task = self.pretrain_task
        history = train(model.parameters(), loss, task.train_split(self.data(task)), _optim(sched),
                        batch_size=sched.batch_size, seed=seed, workers=self.workers, modules=[model],
                        device=self.device, desc=desc, progress=self.progress, on_step=on_step,
                        checkpoint=self._checkpointing(folder, method), layout=self.layout)
        return history

    def _fit(self, work_dir: Path) -> Callable[..., list[dict[str, float]]]:
        """The trainer as a task's fine-tunes use it (`RunContext.fit`): resumable from `work_dir`."""

        def fit(model: nn.Module, loss_fn: Callable, dataset: Any, *, epochs: float, lr: float, batch_size: int,
                weight_decay: float, warmup_epochs: float, desc: str) -> list[dict[str, float]]:
            work_dir.mkdir(parents=True, exist_ok=True)
            return train(model.parameters(), loss_fn, dataset,
                         OptimConfig(epochs=epochs, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs),
                         batch_size=batch_size, seed=self.seed, workers=self.workers, modules=[model],
                         device=self.device, desc=desc, progress=self.progress,
                         checkpoint=self._checkpointing(work_dir), layout=self.layout)

        return fit

    # -- stage 1: teacher ------------------------------------------------------------------
    def teacher(self) -> tuple[Backbone, str]:
        cfg, task = self.cfg, self.pretrain_task
        data = self.data(task)
        sched = self.budget.teacher_for(self.backbone_params)
        overrides = {**task.backbone_overrides(data), "img_size": self.img_size}
        if self.budget.img_size is None:
            overrides.pop("img_size")
        spec = {"backbone": cfg.backbone, "weights": cfg.teacher_weights, "data": self.data_id(task),
                "overrides": overrides, "schedule": sched if cfg.teacher_weights is None else None,
                "seed": cfg.teacher_seed}
        if cfg.teacher_weights not in (None, "hub"):  # a replaced file must not reuse old rows
            stat = Path(cfg.teacher_weights).stat()
            spec["weights_stamp"] = [stat.st_size, stat.st_mtime_ns]
        stage = self.cache.stage("teachers", cfg.backbone.replace(":", "_"), spec)
        if cfg.teacher_weights is not None:
            seed_everything(cfg.teacher_seed)  # a new classifier on pretrained weights is drawn from the global RNG
            model = create_backbone(cfg.backbone, weights=cfg.teacher_weights, **overrides)
        else:
            def fit(folder: Path) -> dict[str, Any]:
                seed_everything(cfg.teacher_seed)
                model = create_backbone(cfg.backbone, **overrides).to(self.device)
                objective = task.objective()
                log.info("teacher: training %s on %s for %s epochs", cfg.backbone, task.name, sched.epochs)
                start = time.time()
                def loss(b: Any) -> dict[str, torch.Tensor]:
                    output = objective.forward(model, b)
                    # An objective made of named terms (ALBEF's itc, itm, mlm) logs each of them.
                    named = {k: v.detach() for k, v in output.items()} if isinstance(output, dict) else {}
                    return {"loss": objective.loss(output, b), **named}

                history = self._train(model, loss, sched, folder, f"teacher {cfg.backbone}", cfg.teacher_seed)
                if distributed.is_main():
                    atomic_save_torch(model.state_dict(), folder / "model.pt")
                return {"history": history, "seconds": time.time() - start}

            if stage.done() is not None:
                log.info("teacher: reusing %s", stage.dir)
            self.cache.run(stage, fit)
            if distributed.is_main():  # only once the stage is marked finished
                (stage.dir / CHECKPOINT).unlink(missing_ok=True)
            model = create_backbone(cfg.backbone, weights=stage.dir / "model.pt", **overrides)
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, stage.hash

    # -- stages 2 and 3: compress, then pre-train ---------------------------------------------
    def pretrain_schedule(self) -> Schedule:
        return self.budget.pretrain_for(self.backbone_params, self.pretrain_task.name)

    def student_stage(self, method: Method, teacher_hash: str) -> Stage:
        settings = method.resolved(self.info)
        batches = method.calibration_batches()
        # A data-aware start depends on its calibration batches even where nothing trains (plain SVD).
        calibration = {"calibration": self.calibration_stage(batches, teacher_hash).hash} if batches else {}
        spec = {"teacher": teacher_hash, **method.describe(), **({"settings": settings} if settings else {}),
                "schedule": self.pretrain_schedule() if method.trains else None,
                "seed": self.seed, **calibration}
        return self.cache.stage(f"students/{self.cfg.backbone.replace(':', '_')}", method.name, spec)

    def calibration_stage(self, batches: int, teacher_hash: str) -> Stage:
        spec = {"teacher": teacher_hash, "data": self.data_id(self.pretrain_task), "batches": batches,
                "batch_size": self.pretrain_schedule().batch_size, "seed": self.seed}
        return self.cache.stage(f"calibration/{self.cfg.backbone.replace(':', '_')}", "inputs", spec)

    def calibration(self, batches: int, teacher: Backbone, teacher_hash: str) -> Calibration:
        """The teacher's layer-input statistics over `batches` pre-training batches: one stage per
        (teacher, data, batches, student seed), shared by every method and option that asks for them.
        The batches are drawn with the student seed, so the spread over seeds includes which
        images calibrated the start (an untrained student has no other source of it)."""
        task, sched = self.pretrain_task, self.pretrain_schedule()
        stage = self.calibration_stage(batches, teacher_hash)

        def collect(folder: Path) -> dict[str, Any]:
            start = time.time()
            loader = torch.utils.data.DataLoader(task.train_split(self.data(task)), batch_size=sched.batch_size,
                                                 shuffle=True, num_workers=self.workers,
                                                 generator=torch.Generator().manual_seed(self.seed))
            objective = task.objective()
            first = (b for _, b in zip(range(batches), loader))
            names = [n for n, _ in eligible_linears(teacher, ())]  # every linear: any keep_full_rank works
            bar = (lambda it: tqdm(it, total=batches, desc="calibration", leave=False)) if self.progress else iter
            calib = collect_calibration(teacher, names, (move_to(b, self.device) for b in first),
                                        lambda b: objective.forward(teacher, b), bar)
            calib.save(folder / "calibration.pt")
            log.info("calibration: input statistics of %d layers over %d samples in %.1f s", len(names),
                     calib.samples, time.time() - start)
            return {"samples": calib.samples, "layers": len(names), "seconds": time.time() - start}

        self.cache.run(stage, collect, collective=False)
        return Calibration.load(stage.dir / "calibration.pt")

    def student(self, method: Method, teacher: Backbone, teacher_hash: str) -> StudentResult:
        stage = self.student_stage(method, teacher_hash)
        batches = method.calibration_batches()
        calibration = self.calibration(batches, teacher, teacher_hash) if batches else None
        # Seeded before building: adapters and heads are initialised from the global RNG,
        # which must not depend on which earlier stages ran in this process or were resumed.
        seed_everything(self.seed)
        student = method.build_student(teacher, calibration)
        if not method.trains:
            return StudentResult(student.eval(), stage.hash, {}, 0.0)
        sched = self.pretrain_schedule()
        trained: list[nn.Module] = []

        def fit(folder: Path) -> dict[str, Any]:
            seed_everything(self.seed)
            model = student.to(self.device)
            objective = self.pretrain_task.objective()
            log.info("%s: pre-training for %s epochs", method.name, sched.epochs)
            start = time.time()
            history = self._train(model, lambda b: method.loss(model, teacher, b, objective), sched, folder,
                                  method.name, self.seed, method, on_step=lambda p: method.on_step(model, p))
            method.on_step(model, 1.0)
            model = method.finalize(model)
            if distributed.is_main():
                atomic_save_torch(model.state_dict(), folder / "model.pt")
            trained.append(model)
            return {"history": history, "loss_terms": history[-1], "seconds": time.time() - start}

        if stage.done() is not None:
            log.info("%s: reusing pre-trained student %s", method.name, stage.dir)
        report = self.cache.run(stage, fit)
        if distributed.is_main():
            (stage.dir / CHECKPOINT).unlink(missing_ok=True)
        if trained:
            model = trained[0]
        else:
            method.on_step(student, 1.0)
            model = method.finalize(student)
            model.load_state_dict(torch.load(stage.dir / "model.pt", map_location="cpu", weights_only=True))
        return StudentResult(model.to(self.device).eval(), stage.hash, report["loss_terms"], report["seconds"])

    # -- stages 4 and 5: each task's row, measured ------------------------------------------------
    def variants(self, method: Method, task: Task) -> list[str]:
        """Row variants: the plain row, and Table 9's "+" row when batches are scaled."""
        if self.cfg.scale_batch and task.fine_tunes and method.name != REFERENCE_METHOD:
            return ["", "+"]
        return [""]

    def row(self, method: Method, task: Task, variant: str, student: Callable[[], StudentResult],
            teacher_hash: str) -> dict[str, Any] | None:
        cfg = self.cfg
        schedule = self.schedule(task)
        spec = {"student": self.student_stage(method, teacher_hash).hash, "task": task.name, "schedule": schedule,
                "budget": {"img_size": self.img_size, "latency_batch": self.budget.latency_batch_size},
                "device": str(self.device), "variant": variant, "data": self.data_id(task)}
        stage = self.cache.stage(f"rows/{cfg.backbone.replace(':', '_')}", f"{method.name}{variant}-{task.name}", spec)
        # With --scale-batch the uncompressed model's training peak is every other row's limit,
        # so it is measured even when its row is stored.
        scaling = cfg.scale_batch and task.fine_tunes
        if scaling and method.name == REFERENCE_METHOD and not self.scaling.has_reference(task):
            self.scaling.set_reference(task, student().model, self.data(task), schedule)
        report = distributed.broadcast(stage.done())  # rank 0's view: every rank takes the same branch
        if report is not None:
            log.info("%s%s / %s: row exists in %s, reused", method.name, variant, task.name, stage.dir)
        else:
            report = self.cache.run(stage, lambda folder: {"row": self._compute_row(
                method, task, variant, student(), schedule, stage, teacher_hash)})
        # Only once the stage is marked finished: what was kept only to resume a killed fine-tune.
        if distributed.is_main():
            task.discard_resume_state(stage.dir / WORK_DIR)
            (stage.dir / WORK_DIR / CHECKPOINT).unlink(missing_ok=True)
        row = report["row"]
        if row is None:
            log.info("%s%s / %s: no larger batch fits the uncompressed model's %.0f MB; no '+' row",
                     method.name, variant, task.name, self.scaling.limit_mb(task))
            return None
        if scaling and "train_peak_mb" not in row["finetune"]:  # a row of a run without --scale-batch
            memory = self.scaling.peak(method.name, task, student().model, self.data(task), schedule,
                                       schedule.batch_size)
            row["finetune"].update(self.scaling.row_fields(task, memory))
            self.cache.update(stage, {"row": row})
        log.info("%s / %s: %s", row["method"], task.name, ", ".join(f"{k}={v:.2f}" for k, v in row["metrics"].items()))
        if distributed.is_main():
            self.store.put(row)
            write_leaderboard(self.store.rows(), cfg.results)
        return row

    def _compute_row(self, method: Method, task: Task, variant: str, result: StudentResult, schedule: Any,
                     stage: Stage, teacher_hash: str) -> dict[str, Any] | None:
        cfg, data = self.cfg, self.data(task)
        batch, memory = None, None
        if variant == "+":
            # The batch a resumed fine-tune was started with, not a second measurement near the limit.
            chosen = stage.dir / "train_batch.json"
            if chosen.is_file():
                batch = json.loads(chosen.read_text())["train_batch"]
                memory = self.scaling.peak(method.name, task, result.model, data, schedule, batch)
            else:
                batch, memory = self.scaling.largest_batch(method.name, task, result.model, data, schedule)
                atomic_write_text(chosen, json.dumps({"train_batch": batch}))
            if batch == schedule.batch_size:
                return None
        elif cfg.scale_batch and task.fine_tunes:
            memory = self.scaling.peak(method.name, task, result.model, data, schedule, schedule.batch_size)
        if task.fine_tunes:
            log.info("%s%s / %s: fine-tuning (%s) in %s", method.name, variant, task.name,
                     task.describe_schedule(schedule, batch), stage.dir)
        work_dir = stage.dir / WORK_DIR
        ctx = RunContext(self.device, self.seed, work_dir, self.workers, self.progress, batch,
                         fit=self._fit(work_dir), reference=self._teacher)
        res = task.run(result.model, data, schedule, ctx)
        if not distributed.is_main():  # rank 0's row is the one kept; timing every rank at once would skew it
            return None
        efficiency = measure_all(task.measured_module(res),
                                 lambda n: task.example_inputs(data, schedule, res.model, n),
                                 latency_batch=self.budget.latency_batch_size,
                                 latency_repeats=schedule.latency_repeats, threads=torch.get_num_threads(),
                                 device=str(self.device), **task.measure_options)
        if task.name == self.pretrain_task.name:
            efficiency.update(self.pretrain_step_cost(method, result.model))
        efficiency["input_size"] = task.input_size(schedule, data)
        if task.measure_scope:
            efficiency["scope"] = task.measure_scope
        finetune = dict(res.details)
        if memory is not None:
            finetune.update(self.scaling.row_fields(task, memory))
        columns = [[f"metrics.{m.name}", m.header, m.fmt] for m in task.metrics if m.in_table]
        columns += [[c.path, c.header, c.fmt] for c in task.columns]
        return {
            "backbone": cfg.backbone,
            "method": method.name + variant,
            "options": method.options_label(),
            **({"recipe": method.recipe()} if method.recipe() else {}),
            "ratio": method.compression_ratio(self.info),
            "task": task.name,
            "seed": self.seed,
            "teacher_seed": cfg.teacher_seed,
            "provenance": self.provenance(task),
            "budget": self.budget.name,
            "primary_metric": task.primary_metric,
            "higher_is_better": next(m.higher_is_better for m in task.metrics if m.name == task.primary_metric),
            "columns": columns,
            "ablation": method.table_fields(self.info),
            "metrics": res.metrics,
            "efficiency": efficiency,
            **({"finetune": finetune} if task.fine_tunes else {}),
            **({"analysis": res.analysis} if res.analysis else {}),
            "train_seconds": res.seconds,
            "loss_terms": result.loss_terms,
            "pretrain_seconds": result.train_seconds,
            "global_batch": self.pretrain_schedule().batch_size if method.trains else None,
            "layout": self.layout_fields(),
            "device": str(self.device),
            "data": self.data_id(task),
            "versions": versions(),
            "code": code_version(),
            "machine": machine(self.device),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config_hash": stage.hash,
            "config": {"suite": cfg.to_dict(), "method": method.describe(),
                       **({"settings": method.resolved(self.info)} if method.resolved(self.info) else {}),
                       "budget": asdict(self.budget),
                       "schedule": asdict(schedule), "teacher_hash": teacher_hash, "student_hash": result.stage_hash},
        }

    def pretrain_step_cost(self, method: Method, student: nn.Module) -> dict[str, Any]:
        """Table 8: one step of pre-training the student's architecture on the base objective, at the
        pre-training batch (the paper times the plain low-rank model against the original one; a
        method's own loss terms and teacher are in its `pretrain_seconds`). Measured for every row,
        so the spread over seeds shows the timing's own noise."""
        task, sched = self.pretrain_task, self.pretrain_schedule()
        seed_everything(self.seed)
        loader = torch.utils.data.DataLoader(task.train_split(self.data(task)), batch_size=sched.batch_size)
        batch = move_to(next(iter(loader)), self.device)
        objective = task.objective()
        return measure_train_step(trainable_copy(student), lambda m: objective.loss(objective.forward(m, batch), batch),
                                  batch_size=sched.batch_size, repeats=10, warmup=3, device=self.device)

    def layout_fields(self) -> dict[str, Any]:
        """How this run split its global batches (not hashed: it changes no result beyond float order)."""
        sched = self.pretrain_schedule()
        micro, accumulate = self.layout.split(sched.batch_size, self.world.size, "pre-training")
        return {"world_size": self.world.size, "micro_batch": micro, "accumulate": accumulate,
                "compile": self.layout.compile, "channels_last": self.layout.channels_last}

    # -- the whole suite ----------------------------------------------------------------------
    def jobs(self) -> list[GridJob]:
        """The grid's students in run order: seed by seed, then method by method (with --scale-batch the
        uncompressed model first, its training peak being the others' limit)."""
        names = list(self.cfg.methods)
        if self.cfg.scale_batch:
            names.sort(key=lambda name: name != REFERENCE_METHOD)
        jobs: list[GridJob] = []
        for seed in self.cfg.seeds:
            seen: set[str] = set()
            for name in names:
                for ratio, recipe, point in method_grid(name, self.cfg):
                    options = method_options_for(name, self.cfg, ratio, recipe, point)
                    key = json.dumps(create_method(name, **options).describe(), sort_keys=True, default=str)
                    if key not in seen:  # one job where a ratio or recipe changes nothing (dense)
                        seen.add(key)
                        jobs.append(GridJob(name, seed, options.get("ratio"), options.get("recipe"),
                                            tuple(sorted(point.items()))))
        return jobs

    def prepare(self) -> tuple[Backbone, str]:
        """The stages every job shares: each task's data, then the teacher (trained once, reused after)."""
        if self._teacher is None:
            for task in (self.pretrain_task, *self.tasks.values()):
                self.data(task)  # bad data must stop the run before the teacher trains
            self._teacher, self._teacher_hash = self.teacher()
        return self._teacher, self._teacher_hash

    def run(self) -> list[dict[str, Any]]:
        """Every row of the grid, once per student seed; the data and the teacher are shared by all seeds."""
        self.prepare()
        rows = []
        for job in self.jobs():
            rows += self.run_job(job)
        if self.world.main:
            self.store.merge()
            write_leaderboard(self.store.rows(), self.cfg.results)
        return rows

    def run_job(self, job: GridJob) -> list[dict[str, Any]]:
        """One student's rows: every task it supports, every variant (Table 9's "+")."""
        teacher, teacher_hash = self.prepare()
        if job.seed != self.seed:
            self.seed = job.seed
            if len(self.cfg.seeds) > 1:
                log.info("seed %d (teacher and data of seed %d)", job.seed, self.cfg.teacher_seed)
        method = create_method(job.method, **method_options_for(job.method, self.cfg, job.ratio, job.recipe,
                                                                dict(job.sweep)))
        if (self.cfg.scale_batch and method.name != REFERENCE_METHOD
                and any(t.fine_tunes and not self.scaling.has_reference(t) for t in self.tasks.values())):
            # A job of its own (a launcher's) measures the reference peak itself, as the plain run did first.
            self.run_job(replace(job, method=REFERENCE_METHOD, ratio=None, recipe=None, sweep=()))
        cached: list[StudentResult] = []

        def student() -> StudentResult:
            if not cached:  # built only when some row needs it
                cached.append(self.student(method, teacher, teacher_hash))
            return cached[0]

        rows = []
        for task in self.tasks.values():
            reason = method.unsupported(task.needs)
            if reason:
                log.info("%s / %s: skipped, %s", method.name, task.name, reason)
                continue
            for variant in self.variants(method, task):
                row = self.row(method, task, variant, student, teacher_hash)
                if row is not None:
                    rows.append(row)
        return rows
