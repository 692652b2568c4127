"""Run the benchmark suite: backbone x methods x tasks, then write the leaderboard.

With no arguments it runs the embedded default: the synthetic world, a small
DeiT trained from scratch as teacher, and the Table 7 ablation rows on
classification, in about five minutes on a 2-core CPU.

    python tools/run_suite.py --backbone swin_base --tasks seg,det

runs UperNet and Cascade Mask R-CNN for the uncompressed model, PELA, plain SVD
and every baseline that applies, on synthetic ADE20K/COCO-format scenes unless
--data seg=DIR / --data det=DIR point at the real data sets.

    torchrun --nproc_per_node 8 tools/run_suite.py ...     one job on 8 GPUs (DDP)
    python tools/run_suite.py --launcher slurm --slurm-partition gpu --gpus-per-job 8 ...
                                                           the grid as Slurm jobs (submitit)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import NamedTuple
from pathlib import Path

from _cli import run_main

from benchmark.config import BUDGETS, SuiteConfig
from benchmark.plugins import import_plugin
from common.errors import PelaBenchError

log = logging.getLogger("pela_bench")

# The flags that named one data root each before `--data TASK=DIR`; kept as aliases.
DATA_ALIASES = {"data_root": "cls", "seg_root": "seg", "det_root": "det"}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _ratio_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _pairs(pairs: list[str], flag: str, parse_json: bool) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PelaBenchError(f"{flag} {pair!r}: expected KEY=VALUE")
        if key in out:
            raise PelaBenchError(f"{flag} {key} is given twice")
        if parse_json:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a bare word is a string
        out[key] = value
    return out


def _json_or_word(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word is a string


def default_methods(tasks: tuple[str, ...], every: tuple[str, ...]) -> tuple[str, ...]:
    """Every method, unless every task names its paper table's methods: then the union of those."""
    from tasks import create_task

    named = [create_task(t).paper_methods for t in tasks]
    if not named or any(m is None for m in named):
        return every
    return tuple(dict.fromkeys(m for methods in named for m in methods))


def applicable(backbone: str, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The default methods that apply to `backbone`; the others are left out with their reason."""
    import torch

    from backbones import create_backbone
    from methods import method_class

    with torch.device("meta"):
        info = create_backbone(backbone).info
    kept = []
    for name in methods:
        try:
            method_class(name).check_backbone(info)
            kept.append(name)
        except PelaBenchError as exc:
            log.info("default methods: leaving out %s (%s)", name, exc)
    return tuple(kept)


class Parsed(NamedTuple):
    cfg: SuiteConfig
    quiet: bool
    launch: "LaunchConfig | None"  # None: run here, in this process (or these torchrun processes)
    imports: tuple[str, ...]


def parse_args(argv: list[str] | None = None) -> tuple[SuiteConfig, bool]:
    parsed = parse(argv)
    return parsed.cfg, parsed.quiet


def parse(argv: list[str] | None = None) -> Parsed:
    from benchmark.launch import LAUNCHERS, LaunchConfig

    d = SuiteConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=d.backbone,
                   help=f"registered backbone, or timm:<model> for any timm ViT or Swin (default {d.backbone})")
    p.add_argument("--methods", type=_csv, default=None,
                   help=f"comma-separated methods (default: {','.join(d.methods)}; with --ratio, those that take "
                        "one; with only seg/det tasks, the paper's Tables 2 and 3 methods)")
    p.add_argument("--tasks", type=_csv, default=d.tasks, help="comma-separated tasks (default: %(default)s)")
    p.add_argument("--ratio", type=_ratio_list, default=(), metavar="R,R,...",
                   help="compression ratio, or several for a sweep (Fig. 4: 1.5,2,3,5,10), each a student of every "
                        "factorising method (default: the backbone's paper preset)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="a method option at several values, each a student of every method that takes it, crossed "
                        "with --ratio, --recipe and the other sweeps (e.g. --sweep init=svd,whitened "
                        "--sweep params=0.9,0.5: the starting-point table)")
    p.add_argument("--recipe", type=_csv, default=(), metavar="NAME,...",
                   help="PELA's recipe: official (the official code's settings per backbone family; the default) "
                        "or paper (the text's), or both for a row of each (results/paper/recipes.md)")
    p.add_argument("--data", action="append", default=[], metavar="TASK=DIR",
                   help="a task's data in its real on-disk format (cls: ImageNet folder, also the teacher's and "
                        "pre-training data; seg: ADE20K; det: COCO); default: the synthetic world")
    p.add_argument("--data-root", default=None, help="alias of --data cls=DIR")
    p.add_argument("--seg-root", default=None, help="alias of --data seg=DIR")
    p.add_argument("--det-root", default=None, help="alias of --data det=DIR")
    p.add_argument("--check-data", action="store_true",
                   help="read every image of every data set before any training, naming the first bad file")
    p.add_argument("--scale-batch", action="store_true",
                   help="Table 9: also fine-tune each compressed model at the largest batch whose training peak "
                        "memory fits the uncompressed model's (rows '<method>+')")
    p.add_argument("--teacher-weights", default=None, help="'hub' or a checkpoint path (default: train the teacher)")
    p.add_argument("--out", default=d.out, help="stage outputs: data, checkpoints, rows (default: %(default)s)")
    p.add_argument("--results", default=d.results, help="published results store and tables (default: %(default)s)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seed_list, default=None, metavar="S,S,...",
                       help="student seeds, each a run of the whole grid; tables show mean +- std over them "
                            f"(default: {','.join(map(str, d.seeds))})")
    seeds.add_argument("--seed", type=int, default=None, help="one student seed (as --seeds N)")
    p.add_argument("--teacher-seed", type=int, default=d.teacher_seed,
                   help="seed of the synthetic data and the teacher, shared by every student seed "
                        "(default: %(default)s)")
    p.add_argument("--budget", choices=BUDGETS, default=d.budget,
                   help="tiny: a one-minute check that a configuration runs; smoke: the CPU default; paper")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --set alpha=0.5 --set rwp_form=linear")
    scale = p.add_argument_group("scale-out (README: one GPU, torchrun, multi-node, Slurm)")
    scale.add_argument("--global-batch", type=int, default=None, metavar="N",
                       help="the teacher's and every pre-training's batch per optimiser step (default: the budget's); "
                            "split over the processes, then into micro-batches")
    scale.add_argument("--micro-batch", type=int, default=None, metavar="N",
                       help="at most N samples per process and forward; the rest of a process's share of the global "
                            "batch is reached by gradient accumulation (default: all of it at once)")
    scale.add_argument("--compile", action="store_true", help="torch.compile the trained model")
    scale.add_argument("--channels-last", action="store_true", help="channels-last images and weights in training")
    scale.add_argument("--workers", type=int, default=None,
                       help="data loader workers per process (default: 1 on CPU, up to 8 per GPU)")
    scale.add_argument("--launcher", choices=LAUNCHERS, default="none",
                       help="none: run here (under torchrun: one DDP job); local or slurm: the grid as jobs through "
                            "submitit, one per student, after one for the data and the teacher")
    scale.add_argument("--slurm-partition", default=None)
    scale.add_argument("--slurm-account", default=None)
    scale.add_argument("--gpus-per-job", type=int, default=None,
                       help="GPUs per node of each job, one process each (default: 1 with slurm, 0 local)")
    scale.add_argument("--nodes", type=int, default=1, help="nodes per job (default: %(default)s)")
    scale.add_argument("--time-min", type=int, default=240,
                       help="each job's time limit in minutes; a job that reaches it is requeued and resumes "
                            "(default: %(default)s)")
    scale.add_argument("--cpus-per-task", type=int, default=None)
    scale.add_argument("--max-parallel", type=int, default=None,
                       help="jobs at once (default: 1 local, no limit on Slurm)")
    scale.add_argument("--slurm-set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --slurm-set qos=high --slurm-set constraint=a100")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
                   help="training stages save a resumable checkpoint this often (default: %(default)s; 0: never)")
    p.add_argument("--checkpoint-steps", type=int, default=d.checkpoint_steps,
                   help="... or every this many steps (default: %(default)s = off)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file first, so the tasks, methods or backbones it registers exist")
    p.add_argument("--list", action="store_true", help="list backbones, methods and tasks, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    for spec in a.imports:
        import_plugin(spec)
    if a.list:
        from backbones import list_backbones
        from methods import list_methods
        from tasks import list_tasks

        print("backbones:", ", ".join(list_backbones()), "(and timm:<model>)")
        print("methods:  ", ", ".join(list_methods()))
        print("tasks:    ", ", ".join(list_tasks()))
        raise SystemExit(0)
    options = _pairs(a.options, "--set", parse_json=True)
    sweeps = {k: tuple(_json_or_word(v) for v in _csv(text))
              for k, text in _pairs(a.sweep, "--sweep", parse_json=False).items()}
    data = _pairs(a.data, "--data", parse_json=False)
    for flag, task in DATA_ALIASES.items():
        value = getattr(a, flag)
        if value is not None:
            if task in data and data[task] != value:
                raise PelaBenchError(f"--{flag.replace('_', '-')} {value} and --data {task}={data[task]} disagree")
            data[task] = value
    from tasks import canonical_task_name

    by_task: dict[str, str] = {}
    for key, value in data.items():
        name = canonical_task_name(key)
        if name in by_task and by_task[name] != value:
            raise PelaBenchError(f"--data {key}={value} and --data {name}={by_task[name]} name the same task")
        by_task[name] = value
    data = by_task
    method_names = a.methods
    if method_names is None:
        method_names = applicable(a.backbone, default_methods(a.tasks, d.methods))
        # A ratio or a full-rank list is for the factorising methods; named others are refused.
        if a.ratio or "keep_full_rank" in options:
            from methods import method_class

            method_names = tuple(m for m in method_names if method_class(m).takes_ratio)
            log.info("factorisation set: running %s", ", ".join(method_names))
    cfg = SuiteConfig(
        backbone=a.backbone, methods=method_names, tasks=a.tasks, ratios=a.ratio, recipes=tuple(a.recipe),
        sweeps=sweeps, data=data, scale_batch=a.scale_batch, teacher_weights=a.teacher_weights, out=a.out, results=a.results,
        seeds=a.seeds or ((a.seed,) if a.seed is not None else d.seeds), teacher_seed=a.teacher_seed,
        budget=a.budget, device=a.device, method_options=options, checkpoint_minutes=a.checkpoint_minutes,
        checkpoint_steps=a.checkpoint_steps, check_data=a.check_data, global_batch=a.global_batch,
        micro_batch=a.micro_batch, compile=a.compile, channels_last=a.channels_last, workers=a.workers,
    )
    launch = None
    if a.launcher != "none":
        slurm = a.launcher == "slurm"
        launch = LaunchConfig(
            launcher=a.launcher, partition=a.slurm_partition, account=a.slurm_account,
            gpus_per_job=a.gpus_per_job if a.gpus_per_job is not None else int(slurm), nodes=a.nodes,
            time_min=a.time_min, cpus_per_task=a.cpus_per_task,
            max_parallel=a.max_parallel if a.max_parallel is not None else (0 if slurm else 1),
            slurm_extra=_pairs(a.slurm_set, "--slurm-set", parse_json=False))
        launch.check()
    elif a.slurm_partition or a.slurm_account or a.slurm_set or a.gpus_per_job is not None:
        raise PelaBenchError("--slurm-* and --gpus-per-job apply to --launcher slurm (or local)")
    return Parsed(cfg, a.quiet, launch, tuple(a.imports))


def main() -> int:
    parsed = parse()
    cfg = parsed.cfg
    from benchmark.store import ResultStore
    from common import distributed

    start = time.time()
    if parsed.launch is not None:
        from benchmark.launch import launch

        if distributed.launched():
            raise PelaBenchError("--launcher starts its own processes: run it with python, not torchrun")
        store = ResultStore(Path(cfg.results) / "results.jsonl")
        try:
            rows = launch(cfg, parsed.launch, imports=parsed.imports)
        except PelaBenchError:
            _publish(cfg, store, start, None)  # what the finished jobs wrote is published even if some failed
            raise
        _publish(cfg, store, start, len(rows))
        return 0
    from benchmark.runner import SuiteRunner

    try:
        rows = SuiteRunner(cfg, progress=not parsed.quiet).run()
        if distributed.is_main():
            _publish(cfg, ResultStore(Path(cfg.results) / "results.jsonl"), start, len(rows))
    finally:
        if distributed.world().size > 1:
            distributed.barrier()
            import torch.distributed

            torch.distributed.destroy_process_group()
    return 0


def _publish(cfg: SuiteConfig, store: "ResultStore", start: float, n_rows: int | None) -> None:
    from reports.publish import publish
    from reports.rows import load_rows

    if not store.rows():
        return
    store.merge()
    # The whole store, not only this run's rows: the tables put every backbone's runs side by side.
    written = publish(load_rows(store.path), cfg.results)
    if n_rows is not None:
        log.info("%d rows in %.0f s; leaderboard: %s/leaderboard.md; %d tables and figures under %s", n_rows,
                 time.time() - start, cfg.results, len(written), cfg.results)


if __name__ == "__main__":
    run_main(main)
