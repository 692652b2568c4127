"""The suite's configuration: typed, validated before any work starts, hashed per stage.

Every stage's output is keyed by the hash of exactly the settings that shape it,
so changing, say, PELA's alpha re-runs PELA's pre-training and the rows after it,
but not the teacher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import PelaBenchError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Schedule:
    """One training run's optimisation settings (mirrors `benchmark.trainer.OptimConfig`)."""

    epochs: float
    lr: float
    batch_size: int
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float | None = 1.0


@dataclass(frozen=True)
class Budget:
    """How much teacher and pre-training work a suite run does.

    `tiny` checks that a configuration runs end to end in a minute (its numbers mean
    nothing), `smoke` fits a 2-core CPU, `paper` is the paper's protocol. Each task
    keeps its own schedule for each budget name (`Task.schedules`).
    """

    name: str
    img_size: int | None  # None: the backbone's own
    teacher: Schedule
    pretrain: Schedule
    latency_batch_size: int = 1
    # Teacher and pre-training schedules for paper-size backbones (over 10 M parameters)
    # where the budget cannot afford the full ones (None: same as for the others).
    teacher_large: Schedule | None = None
    pretrain_large: Schedule | None = None
    # Pre-training of the smaller backbones on a given pre-training task, where it differs from `pretrain`.
    pretrain_on: dict[str, Schedule] = field(default_factory=dict)

    def teacher_for(self, n_params: int) -> Schedule:
        return self.teacher_large if self.teacher_large is not None and n_params > LARGE_PARAMS else self.teacher

    def pretrain_for(self, n_params: int, task: str = "") -> Schedule:
        """The intermediate pre-training of a backbone of `n_params` on pre-training task `task`."""
        if self.pretrain_large is not None and n_params > LARGE_PARAMS:
            return self.pretrain_large
        return self.pretrain_on.get(task, self.pretrain)


LARGE_PARAMS = 10_000_000
# The uncompressed model: Table 9's memory reference, and the first method with --scale-batch.
REFERENCE_METHOD = "dense"


BUDGET_PRESETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny",
        img_size=64,
        teacher=Schedule(epochs=1, lr=2e-3, batch_size=32, warmup_epochs=0.2),
        pretrain=Schedule(epochs=1, lr=1e-3, batch_size=32, warmup_epochs=0.2),
        teacher_large=Schedule(epochs=0.25, lr=5e-4, batch_size=16, warmup_epochs=0.05),
        pretrain_large=Schedule(epochs=0.25, lr=2.5e-4, batch_size=16, warmup_epochs=0.05),
    ),
    "smoke": Budget(
        name="smoke",
        img_size=64,
        teacher=Schedule(epochs=20, lr=2e-3, batch_size=64),
        pretrain=Schedule(epochs=3, lr=1e-3, batch_size=64, warmup_epochs=0.3),
        # The embedded classification world: one epoch of pre-training after 20 of the teacher's
        # (the paper: 50 after 300). With three, the base loss alone brought plain SVD within a point
        # of the teacher and no pre-training term had anything left to recover; with one it stays
        # 2-3 points short (svd_ft at ratio 3, three seeds), so what FD and RWP add can show.
        pretrain_on={"cls": Schedule(epochs=1, lr=1e-3, batch_size=64, warmup_epochs=0.2)},
        # An 88 M-parameter Swin-B cannot be trained on a CPU in minutes; the smoke budget
        # gives it a few dozen steps, enough to exercise every stage.
        teacher_large=Schedule(epochs=0.1, lr=5e-4, batch_size=16, warmup_epochs=0.02),
        pretrain_large=Schedule(epochs=0.05, lr=2.5e-4, batch_size=16, warmup_epochs=0.01),
    ),
    # The official DeiT-B recipe: 50 epochs, 4 x 64 images per step, AdamW at 5e-4 x bs/512.
    "paper": Budget(
        name="paper",
        img_size=None,
        teacher=Schedule(epochs=300, lr=5e-4, batch_size=256, warmup_epochs=5),
        pretrain=Schedule(epochs=50, lr=2.5e-4, batch_size=256, warmup_epochs=1),
    ),
}
BUDGETS = tuple(BUDGET_PRESETS)


@dataclass(frozen=True)
class SuiteConfig:
    backbone: str = "deit_micro"
    methods: tuple[str, ...] = (
        "dense", "svd", "svd_ft", "pela_no_fd", "pela_no_rwp", "pela",
        "lora", "pc_lora", "tinybert", "maskalign", "tome",
    )
    tasks: tuple[str, ...] = ("cls",)
    # Compression ratios, each a student of every factorising method (a sweep: Fig. 4); empty: each
    # backbone's paper preset. Methods without a ratio (dense, LoRA, ToMe, ...) run once.
    ratios: tuple[float, ...] = ()
    # PELA's recipes (`methods.pela_recipes`: "official", "paper"), each a student of every method that
    # takes one; empty: the default recipe. Methods without a recipe run once.
    recipes: tuple[str, ...] = ()
    # Method option -> values, each a student of every method that takes the option, crossed with the
    # ratios, the recipes and each other (`--sweep init=svd,whitened --sweep params=0.9,0.5`).
    sweeps: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # Task name -> data root in the task's real on-disk format; a task without one gets
    # the synthetic world, generated under `out`. The backbone's pre-training task's root
    # also feeds the teacher and every pre-training.
    data: dict[str, str] = field(default_factory=dict)
    # Table 9: also fine-tune each compressed model at the largest batch whose training peak
    # memory stays within the uncompressed model's (rows "<method>+").
    scale_batch: bool = False
    teacher_weights: str | None = None  # None: train the teacher; "hub" or a checkpoint path
    out: str = "runs"
    results: str = "results"
    # The students' seeds, each a run of the whole grid: compression, pre-training, fine-tunes, heads.
    seeds: tuple[int, ...] = (0, 1, 2)
    # The synthetic data's and the teacher's seed. Every student seed shares one data set and one
    # teacher: the paper compresses one released checkpoint, so the spread a table reports is that
    # of what each method does to it (pre-training, fine-tune, head init, data order), not the
    # teacher's own.
    teacher_seed: int = 0
    budget: str = "smoke"
    device: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"alpha": 1.0}
    # Training stages save a resumable checkpoint this often (whichever comes first; 0: never).
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int = 0
    check_data: bool = False  # read every file of every data set before any training
    # Scale-out (`benchmark.trainer.Layout`): the teacher's and every pre-training's batch per optimiser
    # step (None: the budget's), the most samples one process holds per forward (None: all of its share;
    # fewer means gradient accumulation), torch.compile, channels-last, loader workers (None: by device).
    global_batch: int | None = None
    micro_batch: int | None = None
    compile: bool = False
    channels_last: bool = False
    workers: int | None = None

    def budget_preset(self) -> Budget:
        return BUDGET_PRESETS[self.budget]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "SuiteConfig":
        return replace(self, **changes)


def json_default(o: Any) -> Any:
    """`json.dumps` support for the configuration's own types: dataclasses and paths."""
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def config_hash(payload: Any) -> str:
    """Stable 12-hex-digit digest of a JSON-able payload (dataclasses allowed)."""
    blob = json.dumps(payload, sort_keys=True, default=json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_device(name: str) -> "torch.device":
    """`--device` as a torch device; a device that does not exist here is a one-line error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PelaBenchError(f"--device {name!r}: use auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise PelaBenchError(f"--device {name}: no CUDA device is visible")
        if device.index is not None and device.index >= n:
            raise PelaBenchError(f"--device {name}: only {n} CUDA device(s) visible")
    elif device.type != "cpu":
        raise PelaBenchError(f"--device {name!r}: use auto, cpu or cuda[:N]")
    return device


def method_options_for(name: str, cfg: SuiteConfig, ratio: float | None = None,
                       recipe: str | None = None, sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `--set` options (and `ratio`, one of `--ratio`'s; `recipe`, one of `--recipe`'s; `sweep`, one
    point of the `--sweep` grid) that method `name` takes.

    Options a variant fixes are left to it: `--set alpha=0.5` changes PELA's alpha,
    while `pela_no_fd` keeps its alpha of 0 (that is what the row means).
    """
    from methods import method_class, pinned_options

    known = {f.name for f in fields(method_class(name).options_cls)} - set(pinned_options(name))
    opts = {k: v for k, v in cfg.method_options.items() if k in known}
    if ratio is not None and "ratio" in known:
        opts["ratio"] = ratio
    if recipe is not None and "recipe" in known:
        opts["recipe"] = recipe
    opts.update({k: v for k, v in (sweep or {}).items() if k in known})
    return opts


def method_grid(name: str, cfg: SuiteConfig) -> list[tuple[float | None, str | None, dict[str, Any]]]:
    """The (ratio, recipe, sweep point) triples method `name` runs at: every `--ratio` by every `--recipe`
    by every combination of the `--sweep` values of the options it takes."""
    from methods import method_class, pinned_options

    known = {f.name for f in fields(method_class(name).options_cls)} - set(pinned_options(name))
    points: list[dict[str, Any]] = [{}]
    for key, values in cfg.sweeps.items():
        if key in known:
            points = [{**p, key: v} for p in points for v in values]
    return [(ratio, recipe, point) for ratio in (cfg.ratios or (None,)) for recipe in (cfg.recipes or (None,))
            for point in points]


def validate(cfg: SuiteConfig) -> None:
    """Check everything that can be checked before any training starts; raise naming the field."""
    import torch

    from backbones import create_backbone
    from methods import create_method, method_class, pinned_options
    from tasks import canonical_task_name, create_task

    if cfg.budget not in BUDGETS:
        raise PelaBenchError(f"--budget {cfg.budget!r}: choose one of {', '.join(BUDGETS)}")
    with torch.device("meta"):  # metadata only: no weights are allocated
        info = create_backbone(cfg.backbone).info  # raises naming an unknown backbone
    if not cfg.methods:
        raise PelaBenchError("--methods is empty")
    for name in cfg.methods:
        method_class(name).check_backbone(info)  # raises on an unknown name or a misfit
    if not cfg.tasks:
        raise PelaBenchError("--tasks is empty")
    tasks = [create_task(name) for name in cfg.tasks]
    for task in tasks:
        task.check_backbone(info)  # e.g. a vision-language task on an image-only backbone
    pretrain = create_task(info.pretrain_task)
    if pretrain.objective() is None:
        raise PelaBenchError(f"{cfg.backbone}'s pre-training task {pretrain.name!r} has no objective")
    for task in {t.name: t for t in [*tasks, pretrain]}.values():
        task.schedule(cfg.budget)
    for ratio in cfg.ratios:
        if not ratio >= 1:
            raise PelaBenchError(f"--ratio must be >= 1 (1/ratio of the parameters is kept), got {ratio}")
    if len(set(cfg.ratios)) != len(cfg.ratios):
        raise PelaBenchError(f"--ratio lists a ratio twice: {','.join(map(str, cfg.ratios))}")
    if cfg.recipes:
        from methods.pela_recipes import check_recipe

        for recipe in cfg.recipes:
            check_recipe(recipe)
        if len(set(cfg.recipes)) != len(cfg.recipes):
            raise PelaBenchError(f"--recipe lists a recipe twice: {','.join(cfg.recipes)}")
        takers = [n for n in cfg.methods if "recipe" in {f.name for f in fields(method_class(n).options_cls)}
                  and "recipe" not in pinned_options(n)]
        if not takers:
            raise PelaBenchError(f"--recipe applies to PELA's methods (pela, pela_no_fd, pela_no_rwp); none of "
                                 f"{', '.join(cfg.methods)} takes one")
    unused = set(cfg.method_options) - {
        f.name for name in cfg.methods for f in fields(method_class(name).options_cls)
        if f.name not in pinned_options(name)
    }
    if unused:
        raise PelaBenchError(f"option(s) {', '.join(sorted(unused))} apply to none of the methods "
                             f"{', '.join(cfg.methods)} (variants such as pela_no_fd fix their own)")
    for key, values in cfg.sweeps.items():
        if not values or len(set(map(repr, values))) != len(values):
            raise PelaBenchError(f"--sweep {key}: give distinct values, e.g. --sweep {key}=A,B")
        if key in cfg.method_options:
            raise PelaBenchError(f"--sweep {key} and --set {key} both set option {key}; give one")
        if key in ("ratio", "recipe"):
            raise PelaBenchError(f"--sweep {key}: use --{key}, which sweeps it already")
        if not any(key in {f.name for f in fields(method_class(n).options_cls)} - set(pinned_options(n))
                   for n in cfg.methods):
            raise PelaBenchError(f"--sweep {key} applies to none of the methods {', '.join(cfg.methods)}")
    methods = [create_method(name, **method_options_for(name, cfg, ratio, recipe, point)) for name in cfg.methods
               for ratio, recipe, point in method_grid(name, cfg)]
    known_data = {t.name for t in tasks} | {pretrain.name}
    seen: dict[str, str] = {}
    for key, root in cfg.data.items():
        name = canonical_task_name(key)
        if name in seen:
            raise PelaBenchError(f"--data {seen[name]} and --data {key} name the same task {name!r}")
        seen[name] = key
        if name not in known_data:
            raise PelaBenchError(f"--data {key}={root}: task {name!r} is neither run nor the pre-training task "
                                 f"({', '.join(sorted(known_data))})")
        create_task(name).check_root(Path(root))
    if cfg.scale_batch and REFERENCE_METHOD not in cfg.methods:
        raise PelaBenchError(f"--scale-batch compares against the uncompressed model's memory: include "
                             f"'{REFERENCE_METHOD}' in --methods")
    if cfg.scale_batch and not any(t.fine_tunes for t in tasks):
        from tasks import list_tasks

        tuning = [n for n in list_tasks() if create_task(n).fine_tunes]
        raise PelaBenchError(f"--scale-batch applies to tasks that fine-tune ({', '.join(tuning)}): add one to --tasks")
    for task in tasks:
        reasons = [m.unsupported(task.needs) for m in methods]
        if all(reasons):
            raise PelaBenchError(f"none of the methods {', '.join(cfg.methods)} applies to {task.name} "
                                 f"({'; '.join(f'{m.name}: {r}' for m, r in zip(methods, reasons))})")
    if cfg.teacher_weights not in (None, "hub") and not Path(cfg.teacher_weights).is_file():
        raise PelaBenchError(f"--teacher-weights {cfg.teacher_weights} does not exist")
    resolve_device(cfg.device)
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or min(cfg.seeds) < 0:
        raise PelaBenchError(f"--seeds must be distinct integers >= 0, got {','.join(map(str, cfg.seeds)) or 'none'}")
    if cfg.teacher_seed < 0:
        raise PelaBenchError(f"--teacher-seed must be >= 0, got {cfg.teacher_seed}")
    for name in ("global_batch", "micro_batch"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise PelaBenchError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if cfg.workers is not None and cfg.workers < 0:
        raise PelaBenchError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.checkpoint_minutes < 0 or cfg.checkpoint_steps < 0:
        raise PelaBenchError("checkpoint intervals must be >= 0 (0: no intermediate checkpoints)")
