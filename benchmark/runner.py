"""The stage runner: data -> teacher -> compress + pre-train -> evaluate + measure -> report.

Every stage writes its output atomically under `cfg.out`, next to the config that
produced it, and is skipped when that output exists with the same config hash.
A killed run therefore resumes at the first unfinished stage and never writes a
row twice (rows are keyed in the store; see `benchmark.store`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from backbones import Backbone, create_backbone
from benchmark.config import Budget, Schedule, SuiteConfig, config_hash, validate
from benchmark.efficiency import count_parameters, measure_all, measure_train_memory
from benchmark.store import ResultStore, row_id, versions
from benchmark.tables import write_leaderboard
from benchmark.trainer import OptimConfig, train
from common.errors import PelaBenchError
from common.io import atomic_save_torch, atomic_write_text
from common.seed import seed_everything
from methods import Method, create_method, method_class
from tasks import DENSE_TASKS, create_task
from tasks.classification import ClassificationData
from tasks.dense import DenseSchedule
from tasks.synthetic import dense_world, read_marker, write_classification, write_detection, write_segmentation

log = logging.getLogger("pela_bench")


@dataclass
class StudentResult:
    model: nn.Module
    stage_hash: str
    loss_terms: dict[str, float]
    train_seconds: float


def _optim(s: Schedule) -> OptimConfig:
    return OptimConfig(epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay,
                       warmup_epochs=s.warmup_epochs, clip_grad=s.clip_grad)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PelaBenchError(f"--device {name}: no CUDA device is visible")
    return torch.device(name)


class SuiteRunner:
    def __init__(self, cfg: SuiteConfig, *, budget: Budget | None = None, progress: bool = True) -> None:
        """`budget` replaces the named preset (custom schedules, tests); it is hashed like one."""
        validate(cfg)
        self.cfg = cfg
        self.budget = budget or cfg.budget_preset()
        self.out = Path(cfg.out)
        self.results = Path(cfg.results)
        self.store = ResultStore(self.results / "results.jsonl")
        self.device = _resolve_device(cfg.device)
        self.progress = progress
        # One loader worker on CPU overlaps image decoding with compute; more would only
        # take cores from the compute threads.
        self.workers = 1 if self.device.type == "cpu" else min(8, os.cpu_count() or 1)
        with torch.device("meta"):  # the size picks the budget's schedules; no weights needed
            self.backbone_params = count_parameters(create_backbone(cfg.backbone))
        self._dense_data: dict[str, Any] = {}
        self._reference_peak: dict[str, dict[str, Any]] = {}  # task -> the dense model's training peak
        self._peaks: dict[tuple[str, str, int], dict[str, Any]] = {}  # (method, task, batch) -> training peak

    # -- stage 0: data ---------------------------------------------------------------
    def data_root(self) -> Path:
        if self.cfg.data_root is not None:
            return Path(self.cfg.data_root)
        b = self.budget
        spec = {"seed": self.cfg.seed, "n_train": b.synthetic_train, "n_val": b.synthetic_val,
                "img_size": b.img_size or 64}
        root = self.out / "data" / f"synthetic-{config_hash(spec)}"
        if read_marker(root) is None:
            log.info("generating the synthetic world in %s", root)
            from tasks.synthetic import WorldConfig

            write_classification(root, seed=spec["seed"], n_train=spec["n_train"], n_val=spec["n_val"],
                                 world=WorldConfig(img_size=spec["img_size"]), progress=self.progress)
        return root

    def _img_size(self) -> dict[str, Any]:
        return {"img_size": self.budget.img_size} if self.budget.img_size else {}

    def _loader(self, dataset, batch_size: int, train: bool) -> DataLoader:
        gen = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                          num_workers=self.workers, generator=gen if train else None,
                          persistent_workers=train and self.workers > 0,
                          pin_memory=self.device.type == "cuda")

    # -- stage 1: teacher --------------------------------------------------------------
    def teacher(self, data: ClassificationData, data_id: str) -> tuple[Backbone, str]:
        cfg = self.cfg
        sched = self.budget.teacher_for(self.backbone_params)
        spec = {"backbone": cfg.backbone, "weights": cfg.teacher_weights, "data": data_id,
                "num_classes": len(data.classes), **self._img_size(),
                "schedule": sched if cfg.teacher_weights is None else None, "seed": cfg.seed}
        if cfg.teacher_weights not in (None, "hub"):  # a replaced file must not reuse old rows
            stat = Path(cfg.teacher_weights).stat()
            spec["weights_stamp"] = [stat.st_size, stat.st_mtime_ns]
        h = config_hash(spec)
        stage_dir = self.out / "teachers" / f"{cfg.backbone}-{h}"
        overrides = {"num_classes": len(data.classes), **self._img_size()}
        if cfg.teacher_weights is not None:
            model = create_backbone(cfg.backbone, weights=cfg.teacher_weights, **overrides)
        elif (stage_dir / "config.json").is_file():
            log.info("teacher: reusing %s", stage_dir)
            model = create_backbone(cfg.backbone, weights=stage_dir / "model.pt", **overrides)
        else:
            seed_everything(cfg.seed)
            model = create_backbone(cfg.backbone, **overrides).to(self.device)
            task = create_task("cls")
            log.info("teacher: training %s from scratch for %s epochs", cfg.backbone, sched.epochs)
            start = time.time()
            history = train(model.parameters(), lambda b: task.loss(model, b),
                            self._loader(data.train, sched.batch_size, True), _optim(sched),
                            modules=[model], device=self.device, desc=f"teacher {cfg.backbone}",
                            progress=self.progress)
            atomic_save_torch(model.state_dict(), stage_dir / "model.pt")
            atomic_write_text(stage_dir / "config.json", json.dumps(
                {"hash": h, "spec": spec, "history": history, "seconds": time.time() - start},
                indent=2, default=str))
        model = model.to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, h

    # -- stages 2 and 3: compress, then pre-train --------------------------------------------
    def method(self, name: str) -> Method:
        known = {f.name for f in fields(method_class(name).options_cls)}
        opts = {k: v for k, v in self.cfg.method_options.items() if k in known}
        if self.cfg.ratio is not None and "ratio" in known:
            opts["ratio"] = self.cfg.ratio
        return create_method(name, **opts)

    def student_spec(self, method: Method, teacher_hash: str) -> dict[str, Any]:
        return {"teacher": teacher_hash, **method.describe(),
                "schedule": self.budget.pretrain_for(self.backbone_params) if method.trains else None,
                "seed": self.cfg.seed}

    def student(self, method: Method, teacher: Backbone, teacher_hash: str, data: ClassificationData) -> StudentResult:
        sched = self.budget.pretrain_for(self.backbone_params)
        spec = self.student_spec(method, teacher_hash)
        h = config_hash(spec)
        # Seeded before building: adapters and heads are initialised from the global RNG,
        # which must not depend on which earlier stages ran in this process or were resumed.
        seed_everything(self.cfg.seed)
        student = method.build_student(teacher)
        if not method.trains:
            return StudentResult(student, h, {}, 0.0)
        stage_dir = self.out / "students" / self.cfg.backbone / f"{method.name}-{h}"
        if (stage_dir / "config.json").is_file():
            log.info("%s: reusing pre-trained student %s", method.name, stage_dir)
            method.on_step(student, 1.0)
            student = method.finalize(student)
            student.load_state_dict(torch.load(stage_dir / "model.pt", map_location="cpu", weights_only=True))
            saved = json.loads((stage_dir / "config.json").read_text())
            return StudentResult(student.to(self.device), h, saved["loss_terms"], saved["seconds"])
        seed_everything(self.cfg.seed)
        student = student.to(self.device)
        log.info("%s: pre-training for %s epochs", method.name, sched.epochs)
        start = time.time()
        history = train(student.parameters(), lambda b: method.loss(student, teacher, b),
                        self._loader(data.train, sched.batch_size, True), _optim(sched),
                        modules=[student], device=self.device, desc=f"{method.name}",
                        progress=self.progress, on_step=lambda p: method.on_step(student, p))
        method.on_step(student, 1.0)
        student = method.finalize(student)
        seconds = time.time() - start
        atomic_save_torch(student.state_dict(), stage_dir / "model.pt")
        atomic_write_text(stage_dir / "config.json", json.dumps(
            {"hash": h, "spec": spec, "history": history, "loss_terms": history[-1], "seconds": seconds},
            indent=2, default=str))
        return StudentResult(student, h, history[-1], seconds)

    # -- stages 4 and 5: evaluate and measure -----------------------------------------------
    def row(self, method: Method, task_name: str, result: StudentResult, data: ClassificationData,
            data_id: str) -> dict[str, Any]:
        task = create_task(task_name)
        b = self.budget
        img = b.img_size or result.model.info.img_size
        metrics = task.evaluate(result.model, self._loader(data.val, b.eval_batch_size, False), self.device)
        efficiency = measure_all(result.model, (b.latency_batch_size, 3, img, img),
                                 latency_repeats=b.latency_repeats, threads=torch.get_num_threads(),
                                 device=str(self.device))
        row = {"metrics": metrics, "efficiency": efficiency, "train_seconds": result.train_seconds}
        return self._finish_row(row, method, task, result, data_id, data.provenance)

    # -- dense tasks: data, fine-tune, measure --------------------------------------------------
    def dense_schedule(self, task_name: str) -> DenseSchedule:
        return self.budget.seg if task_name == "seg" else self.budget.det

    @staticmethod
    def dense_input_size(s: DenseSchedule) -> int:
        """The square side dense models are measured at: the training crop, or the short side."""
        return s.crop_size[0] if s.crop_size else s.img_scale[1]

    def dense_data(self, task) -> Any:
        if task.name in self._dense_data:
            return self._dense_data[task.name]
        root = self.cfg.seg_root if task.name == "seg" else self.cfg.det_root
        if root is None:
            b = self.budget
            size = self.dense_input_size(self.dense_schedule(task.name))
            spec = {"task": task.name, "seed": self.cfg.seed, "n_train": b.dense_synthetic_train,
                    "n_val": b.dense_synthetic_val, "img_size": size}
            root = self.out / "data" / f"synthetic-{task.name}-{config_hash(spec)}"
            if read_marker(root) is None:
                log.info("generating synthetic %s scenes in %s", task.name, root)
                writer = write_segmentation if task.name == "seg" else write_detection
                writer(root, seed=self.cfg.seed, n_train=spec["n_train"], n_val=spec["n_val"],
                       world=dense_world(size), progress=self.progress)
        data = task.datasets(root)
        self._dense_data[task.name] = data
        return data

    def _dense_backbone(self, result: StudentResult) -> Backbone:
        # A copy: the pyramid neck and the dropped classifier must not leak into other tasks' rows.
        backbone = copy.deepcopy(result.model).to(self.device).train()
        for p in backbone.parameters():
            p.requires_grad_(True)  # every method's student is fine-tuned whole downstream
        return backbone

    def train_peak(self, name: str, task, result: StudentResult, batch: int) -> dict[str, Any]:
        """Peak memory of one dense training step of method `name`'s student at `batch` (Table 9)."""
        key = (name, task.name, batch)
        if key not in self._peaks:
            self._peaks[key] = self._measure_train_peak(task, result, batch)
        return self._peaks[key]

    def _measure_train_peak(self, task, result: StudentResult, batch: int) -> dict[str, Any]:
        s = self.dense_schedule(task.name)
        data = self.dense_data(task)
        seed_everything(self.cfg.seed)
        model = task.build_model(self._dense_backbone(result), data, s).to(self.device)
        try:
            return measure_train_memory(model, task.train_step(model, data, s, batch), self.device)
        finally:
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def scaled_batch(self, name: str, task, result: StudentResult) -> tuple[int, dict[str, Any]]:
        """The largest batch (up to twice the schedule's) whose training peak fits the dense model's."""
        limit = self._reference_peak[task.name]["peak_bytes"]
        base = self.dense_schedule(task.name).batch_size
        best, best_mem = base, self.train_peak(name, task, result, base)
        if best_mem["peak_bytes"] > limit:
            return base, best_mem  # does not even fit at the base batch; reported as is
        for batch in range(base + 1, 2 * base + 1):
            mem = self.train_peak(name, task, result, batch)
            if mem["peak_bytes"] > limit:
                break
            best, best_mem = batch, mem
        return best, best_mem

    def dense_memory(self, name: str, task, result: StudentResult, *,
                     scaled: bool) -> tuple[int | None, dict[str, Any] | None]:
        """Table 9's figures for one dense row: (training batch or None for the schedule's, peak memory)."""
        if not self.cfg.scale_batch:
            return None, None
        if scaled:
            return self.scaled_batch(name, task, result)
        batch = self.dense_schedule(task.name).batch_size
        memory = self.train_peak(name, task, result, batch)
        if name == "dense":
            self._reference_peak[task.name] = memory
            log.info("dense / %s: training peak %.0f MB at batch %d, the limit for the '+' rows",
                     task.name, memory["peak_bytes"] / 2**20, batch)
        return None, memory

    def _memory_fields(self, task, memory: dict[str, Any]) -> dict[str, Any]:
        out = {"train_peak_mb": memory["peak_bytes"] / 2**20, "train_peak_method": memory["method"]}
        ref = self._reference_peak.get(task.name)
        if ref is not None:
            out.update(reference_peak_mb=ref["peak_bytes"] / 2**20,
                       reference_batch=self.dense_schedule(task.name).batch_size)
        return out

    def dense_row(self, method: Method, task, result: StudentResult, work_name: str,
                  batch: int | None = None, memory: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg, b = self.cfg, self.budget
        s = self.dense_schedule(task.name)
        data = self.dense_data(task)
        work_dir = self.out / "dense" / cfg.backbone / work_name
        log.info("%s / %s: fine-tuning %s (%s %s, batch %d) in %s", method.name, task.name,
                 "UperNet" if task.name == "seg" else "Cascade Mask R-CNN", s.length,
                 "epochs" if s.by_epoch else "iterations", batch or s.batch_size, work_dir)
        res = task.run(self._dense_backbone(result), data, s, work_dir=work_dir, seed=cfg.seed, device=self.device,
                       workers=self.workers, train_batch=batch, progress=self.progress)
        size = self.dense_input_size(s)
        efficiency = measure_all(task.inference_module(res.model), (b.latency_batch_size, 3, size, size),
                                 latency_repeats=b.dense_latency_repeats, threads=torch.get_num_threads(),
                                 device=str(self.device), flops_on_meta=False, latency_warmup=1)
        dense: dict[str, Any] = {"train_batch": batch or s.batch_size, "input_size": size, "schedule": asdict(s),
                                 "work_dir": str(work_dir), "data_audit": getattr(data, "audit", {})}
        if res.peak_memory_bytes is not None:
            dense["cuda_fit_peak_mb"] = res.peak_memory_bytes / 2**20
        if memory is not None:
            dense.update(self._memory_fields(task, memory))
        return {"metrics": res.metrics, "efficiency": efficiency, "dense": dense, "train_seconds": res.seconds}

    def _finish_row(self, row: dict[str, Any], method: Method, task, result: StudentResult, data_id: str,
                    provenance: str) -> dict[str, Any]:
        opts = asdict(method.options)
        trains = method.trains
        return {
            "backbone": self.cfg.backbone,
            "method": method.name,
            "task": task.name,
            "seed": self.cfg.seed,
            "provenance": provenance,
            "budget": self.budget.name,
            "primary_metric": task.primary_metric,
            "ablation": {"fd": trains and opts.get("alpha", 0) > 0, "rwp": trains and opts.get("beta", 0) > 0}
            if "alpha" in opts else {},
            "loss_terms": result.loss_terms,
            "pretrain_seconds": result.train_seconds,
            "device": str(self.device),
            "data": data_id,
            "versions": versions(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **row,
        }

    # -- the whole suite --------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        root = self.data_root()
        cls_task = create_task("cls")
        if self.budget.img_size:
            img_size = self.budget.img_size
        else:
            with torch.device("meta"):  # only the metadata is needed, not the weights
                img_size = create_backbone(cfg.backbone).info.img_size
        data = cls_task.datasets(root, img_size)
        data_id = f"{data.provenance}:{root}"
        for task_name in cfg.tasks:  # bad dense data must stop the run before the teacher trains
            if create_task(task_name).name in DENSE_TASKS:
                self.dense_data(create_task(task_name))
        teacher, teacher_hash = self.teacher(data, data_id)
        rows = []
        # The dense model goes first: with --scale-batch its training peak is the others' limit.
        methods = sorted(cfg.methods, key=lambda name: name != "dense") if cfg.scale_batch else list(cfg.methods)
        for name in methods:
            method = self.method(name)
            student_hash = config_hash(self.student_spec(method, teacher_hash))
            result: StudentResult | None = None  # built only when some row is missing
            for task_name in cfg.tasks:
                task = create_task(task_name)
                dense = task.name in DENSE_TASKS
                if dense and method.dense_unsupported:
                    log.info("%s / %s: skipped, %s", name, task.name, method.dense_unsupported)
                    continue
                variants = [("", None)]
                if dense and cfg.scale_batch and name != "dense":
                    variants.append(("+", "scaled"))
                for suffix, scaled in variants:
                    provenance = data.provenance
                    if dense and (self.dense_data(task).provenance == "synthetic"):
                        provenance = "synthetic"  # a row is real only if all the data behind it is
                    key = {"backbone": cfg.backbone, "method": name + suffix, "task": task.name, "seed": cfg.seed,
                           "provenance": provenance}
                    h = config_hash({"student": student_hash, "task": key["task"],
                                     "budget": self.budget.for_task(task.name),
                                     "device": str(self.device), "variant": suffix,
                                     "data": self.dense_data(task).root if dense else None})
                    existing = self.store.find(row_id(key), h)
                    # With --scale-batch the dense model's training peak is every other row's limit,
                    # so it is measured again even when the dense row itself is stored.
                    needs_reference = (dense and cfg.scale_batch and name == "dense"
                                       and task.name not in self._reference_peak)
                    # A row stored by a run without --scale-batch gains its training peak without re-training.
                    needs_peak = (dense and cfg.scale_batch and existing is not None
                                  and "train_peak_mb" not in existing.get("dense", {}))
                    if existing is not None and not (needs_reference or needs_peak):
                        log.info("%s / %s: row exists, skipped", name + suffix, key["task"])
                        rows.append(existing)
                        continue
                    if result is None:
                        result = self.student(method, teacher, teacher_hash, data)
                    if not dense:
                        row = self.row(method, task_name, result, data, data_id)
                    else:
                        batch, memory = self.dense_memory(name, task, result, scaled=bool(scaled))
                        if scaled and batch == self.dense_schedule(task.name).batch_size:
                            log.info("%s+ / %s: no larger batch fits the dense model's %.0f MB; no '+' row",
                                     name, task.name, self._reference_peak[task.name]["peak_bytes"] / 2**20)
                            continue
                        if existing is not None:  # only the training peak was missing
                            existing["dense"].update(self._memory_fields(task, memory))
                            self.store.put(existing)
                            rows.append(existing)
                            continue
                        row = self._finish_row(
                            self.dense_row(method, task, result, f"{name}{suffix}-{task.name}-{h}", batch, memory),
                            method, task, result, data_id, provenance)
                        row["method"] = name + suffix
                    row["config_hash"] = h
                    row["config"] = {"suite": cfg.to_dict(), "method": method.describe(),
                                     "budget": asdict(self.budget), "teacher_hash": teacher_hash,
                                     "student_hash": student_hash}
                    self.store.put(row)
                    rows.append(row)
                    write_leaderboard(self.store.rows(), self.results)
                    log.info("%s / %s: %s", row["method"], key["task"],
                             ", ".join(f"{k}={v:.2f}" for k, v in row["metrics"].items()))
        write_leaderboard(self.store.rows(), self.results)
        return rows
