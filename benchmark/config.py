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
from typing import Any

from common.errors import PelaBenchError
from tasks.dense import DenseSchedule

BUDGETS = ("smoke", "paper")


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
    """How much work a suite run does; `smoke` fits a 2-core CPU, `paper` is the paper's protocol."""

    name: str
    img_size: int | None  # None: the backbone's own
    teacher: Schedule
    pretrain: Schedule
    synthetic_train: int
    synthetic_val: int
    seg: DenseSchedule
    det: DenseSchedule
    dense_synthetic_train: int  # scenes per synthetic ADE/COCO train split
    dense_synthetic_val: int
    eval_batch_size: int = 256
    latency_batch_size: int = 1
    latency_repeats: int = 20
    dense_latency_repeats: int = 20
    # Teacher and pre-training schedules for paper-size backbones (over 10 M parameters)
    # where the budget cannot afford the full ones (None: same as for the others).
    teacher_large: Schedule | None = None
    pretrain_large: Schedule | None = None

    def for_task(self, task: str) -> dict[str, Any]:
        """The budget as one task's rows depend on it, for their config hash.

        The other tasks' schedules are left out, so a new detection schedule does not
        re-run segmentation or classification rows (each can take days at paper scale).
        """
        out = asdict(self)
        if task == "cls":
            drop = ("seg", "det", "dense_synthetic_train", "dense_synthetic_val", "dense_latency_repeats")
        else:
            drop = tuple({"seg", "det"} - {task})
        for name in drop:
            out.pop(name)
        return out

    def teacher_for(self, n_params: int) -> Schedule:
        return self.teacher_large if self.teacher_large is not None and n_params > LARGE_PARAMS else self.teacher

    def pretrain_for(self, n_params: int) -> Schedule:
        return self.pretrain_large if self.pretrain_large is not None and n_params > LARGE_PARAMS else self.pretrain


LARGE_PARAMS = 10_000_000


BUDGET_PRESETS: dict[str, Budget] = {
    "smoke": Budget(
        name="smoke",
        img_size=64,
        teacher=Schedule(epochs=20, lr=2e-3, batch_size=64),
        pretrain=Schedule(epochs=3, lr=1e-3, batch_size=64, warmup_epochs=0.3),
        synthetic_train=3200,
        synthetic_val=800,
        latency_repeats=50,
        # Dense smoke runs check that the whole mm* pipeline trains, evaluates and is measured,
        # at 128 px on a 2-core CPU: a handful of iterations and a smaller RoI budget.
        seg=DenseSchedule(by_epoch=False, length=4, batch_size=2, lr=2e-4, weight_decay=0.01, warmup_iters=2,
                          img_scale=(512, 128), crop_size=(128, 128), val_subset=4, log_interval=1),
        det=DenseSchedule(by_epoch=False, length=3, batch_size=2, lr=1e-4, weight_decay=0.05, warmup_iters=2,
                          img_scale=(128, 128), val_subset=2, log_interval=1,
                          rpn_train_proposals=200, rcnn_train_samples=64, rpn_test_proposals=50),
        dense_synthetic_train=64,
        dense_synthetic_val=16,
        dense_latency_repeats=2,
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
        synthetic_train=50_000,
        synthetic_val=10_000,
        latency_repeats=50,
        # mmseg's UperNet ADE20K schedule: 160k iterations, 16 x 512^2 crops, AdamW 6e-5, poly decay.
        seg=DenseSchedule(by_epoch=False, length=160_000, batch_size=16, lr=6e-5, weight_decay=0.01,
                          warmup_iters=1500, img_scale=(2048, 512), crop_size=(512, 512),
                          checkpoint_interval=16_000),
        # The Swin Cascade Mask R-CNN 3x schedule: 36 epochs, 16 images, AdamW 1e-4, steps at 27 and 33,
        # multi-scale training (short side 480-800).
        det=DenseSchedule(by_epoch=True, length=36, batch_size=16, lr=1e-4, weight_decay=0.05, warmup_iters=1000,
                          img_scale=(1333, 800), multiscale=True, milestones=(27, 33), checkpoint_interval=1),
        dense_synthetic_train=20_000,
        dense_synthetic_val=2_000,
    ),
}


# The methods of the paper's dense tables (2 and 3); ToMe does not apply to dense heads.
DENSE_METHODS: tuple[str, ...] = ("dense", "svd", "pela", "lora", "pc_lora", "tinybert", "maskalign")


@dataclass(frozen=True)
class SuiteConfig:
    backbone: str = "deit_micro"
    methods: tuple[str, ...] = (
        "dense", "svd", "svd_ft", "pela_no_fd", "pela_no_rwp", "pela",
        "lora", "pc_lora", "tinybert", "maskalign", "tome",
    )
    tasks: tuple[str, ...] = ("cls",)
    ratio: float | None = None  # None: each backbone's paper preset
    data_root: str | None = None  # None: the synthetic world, generated under `out`
    seg_root: str | None = None  # ADE20K layout; None: synthetic scenes
    det_root: str | None = None  # COCO layout; None: synthetic scenes
    # Table 9: also train each compressed model's dense heads at the largest batch whose
    # training peak memory stays within the dense model's (rows "<method>+").
    scale_batch: bool = False
    teacher_weights: str | None = None  # None: train the teacher; "hub" or a checkpoint path
    out: str = "runs"
    results: str = "results"
    seed: int = 0
    budget: str = "smoke"
    device: str = "auto"
    method_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"alpha": 1.0}

    def budget_preset(self) -> Budget:
        return BUDGET_PRESETS[self.budget]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> "SuiteConfig":
        return replace(self, **changes)


def config_hash(payload: Any) -> str:
    """Stable 12-hex-digit digest of a JSON-able payload (dataclasses allowed)."""
    def default(o: Any) -> Any:
        if hasattr(o, "__dataclass_fields__"):
            return asdict(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot hash {type(o).__name__}")

    blob = json.dumps(payload, sort_keys=True, default=default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def validate(cfg: SuiteConfig) -> None:
    """Check everything that can be checked before any training starts; raise naming the field."""
    from backbones import list_backbones
    from methods import create_method, method_class
    from tasks import create_task

    if cfg.budget not in BUDGETS:
        raise PelaBenchError(f"--budget {cfg.budget!r}: choose one of {', '.join(BUDGETS)}")
    if cfg.backbone not in list_backbones():
        raise PelaBenchError(f"unknown backbone {cfg.backbone!r}; known backbones: {', '.join(list_backbones())}")
    if not cfg.methods:
        raise PelaBenchError("--methods is empty")
    import torch

    from backbones import create_backbone

    with torch.device("meta"):  # metadata only: no weights are allocated
        info = create_backbone(cfg.backbone).info
    for name in cfg.methods:
        method_class(name).check_backbone(info)  # raises on an unknown name or a misfit
    if not cfg.tasks:
        raise PelaBenchError("--tasks is empty")
    for name in cfg.tasks:
        create_task(name)
    if cfg.ratio is not None and not cfg.ratio >= 1:
        raise PelaBenchError(f"--ratio must be >= 1 (1/ratio of the parameters is kept), got {cfg.ratio}")
    for name in cfg.methods:
        opts = dict(cfg.method_options)
        if cfg.ratio is not None:
            opts["ratio"] = cfg.ratio
        known = {f.name for f in fields(method_class(name).options_cls)}
        create_method(name, **{k: v for k, v in opts.items() if k in known})
    unused = set(cfg.method_options) - {
        f.name for name in cfg.methods for f in fields(method_class(name).options_cls)
    }
    if unused:
        raise PelaBenchError(f"option(s) {', '.join(sorted(unused))} apply to none of the methods {', '.join(cfg.methods)}")
    if cfg.data_root is not None:
        root = Path(cfg.data_root)
        if not root.is_dir():
            raise PelaBenchError(f"--data-root {root} does not exist")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise PelaBenchError(f"--data-root {root} has no '{split}' folder (ImageNet layout: {root}/{split}/<class>/<image>)")
    for flag, value in (("--seg-root", cfg.seg_root), ("--det-root", cfg.det_root)):
        if value is not None and not Path(value).is_dir():
            raise PelaBenchError(f"{flag} {value} does not exist")
    if cfg.scale_batch and "dense" not in cfg.methods:
        raise PelaBenchError("--scale-batch compares against the dense model's memory: include 'dense' in --methods")
    if cfg.scale_batch and not {"seg", "det"} & {create_task(t).name for t in cfg.tasks}:
        raise PelaBenchError("--scale-batch applies to the dense tasks: add seg or det to --tasks")
    dense_tasks = [t for t in (create_task(n).name for n in cfg.tasks) if t in ("seg", "det")]
    if dense_tasks and all(method_class(m).dense_unsupported for m in cfg.methods):
        raise PelaBenchError(f"none of the methods {', '.join(cfg.methods)} applies to {', '.join(dense_tasks)} "
                             f"({'; '.join(f'{m}: {method_class(m).dense_unsupported}' for m in cfg.methods)})")
    if cfg.teacher_weights not in (None, "hub") and not Path(cfg.teacher_weights).is_file():
        raise PelaBenchError(f"--teacher-weights {cfg.teacher_weights} does not exist")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise PelaBenchError(f"--device {cfg.device!r}: use auto, cpu or cuda[:N]")
    if cfg.seed < 0:
        raise PelaBenchError(f"--seed must be >= 0, got {cfg.seed}")
