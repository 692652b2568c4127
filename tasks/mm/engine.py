"""What the OpenMMLab tasks (segmentation, detection) share: the schedule, one mmengine
Runner per fine-tune, and the `MMTask` base class that implements the task contract.

Both tasks train inside mmengine's Runner, as the DESIGN requires (their
pipelines, schedulers and metrics are the toolboxes' own); this module is the
single place that builds that Runner, so both tasks log, checkpoint, resume and
seed the same way.
"""

from __future__ import annotations

import importlib
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from common import distributed
from common.errors import PelaBenchError
from tasks.base import Column, RunContext, Task, TaskData, TaskResult, trainable_copy
from tasks import synthetic as scenes

log = logging.getLogger("pela_bench")


@dataclass(frozen=True)
class MMSchedule:
    """One fine-tune on an OpenMMLab toolbox: how long, how big, how fast, on how much synthetic data.

    `length` counts iterations when `by_epoch` is false (segmentation's 160k) and
    epochs otherwise (detection's 3x = 36). `milestones` are in the same unit;
    empty means a poly decay to zero after the linear warm-up.
    """

    by_epoch: bool
    length: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_iters: int
    img_scale: tuple[int, int]  # (long, short) side limits, mmcv's convention
    crop_size: tuple[int, int] | None = None  # segmentation's random crop
    multiscale: bool = False  # detection: short side drawn from 480-800 (the paper's 3x recipe)
    milestones: tuple[int, ...] = field(default_factory=tuple)
    val_subset: int | None = None  # evaluate on the first N validation images only (smoke)
    checkpoint_interval: int = 0  # 0: only at the end
    log_interval: int = 50
    head_channels: int = 512  # UPerHead width; part of the architecture, kept at the paper's value
    # Cascade Mask R-CNN's widths (the paper's: FPN and RoI convs 256, box-head fc 1024); narrower
    # only for the CPU-sized backbones, whose own features are 48-256 wide.
    neck_channels: int = 256
    roi_fc_channels: int = 1024
    # Hold the method's network fixed: no gradient reaches it, only the pyramid neck and the heads
    # train, so a row measures the features the method delivered (a frozen-feature probe). False:
    # the paper's recipes, which fine-tune everything.
    freeze_backbone: bool = False
    # Segmentation's colour jitter (mmseg's PhotoMetricDistortion, the paper's ADE20K recipe). Off
    # where colour is the label: the synthetic world's classes are hue x fill, told from the washed-out
    # distractors (background) by saturation, so a hue shift or a halved saturation relabels a pixel.
    photometric_distortion: bool = True
    # Detection's RoI budget (None: the paper's 2000 / 512 / 1000). Fewer proposals and
    # sampled RoIs change the compute, not the architecture or its parameter count.
    rpn_train_proposals: int | None = None
    rcnn_train_samples: int | None = None
    rpn_test_proposals: int | None = None
    synthetic_train: int = 64  # scenes per synthetic ADE/COCO split, when no real data is given
    synthetic_val: int = 16
    latency_repeats: int = 20

    def __post_init__(self) -> None:
        for name in ("length", "batch_size", "synthetic_train", "synthetic_val", "latency_repeats",
                     "head_channels", "neck_channels", "roi_fc_channels"):
            if getattr(self, name) < 1:
                raise PelaBenchError(f"mm schedule: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise PelaBenchError(f"mm schedule: lr must be > 0, got {self.lr}")

    @property
    def input_size(self) -> int:
        """The square side models are measured at: the training crop, or the test scale's short side."""
        return self.crop_size[0] if self.crop_size else self.img_scale[1]


@dataclass
class FitResult:
    metrics: dict[str, float]
    model: nn.Module
    seconds: float
    peak_memory_bytes: int | None  # CUDA allocator peak of the fine-tune; None on CPU


def optim_wrapper(s: MMSchedule, device: torch.device, extra_custom_keys: dict | None = None) -> dict[str, Any]:
    # No weight decay on norms, position tables and biases, as the Swin/ViT dense configs.
    custom_keys = {"norm": dict(decay_mult=0.0), "relative_position_bias_table": dict(decay_mult=0.0),
                   "absolute_pos_embed": dict(decay_mult=0.0), "pos_embed": dict(decay_mult=0.0),
                   "cls_token": dict(decay_mult=0.0)}
    custom_keys.update(extra_custom_keys or {})
    wrapper: dict[str, Any] = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=s.lr, betas=(0.9, 0.999), weight_decay=s.weight_decay),
        paramwise_cfg=dict(custom_keys=custom_keys, bias_decay_mult=0.0),
    )
    if device.type == "cuda":  # bf16 autocast, as the project's own trainer does on CUDA
        wrapper.update(type="AmpOptimWrapper", dtype="bfloat16")
    return wrapper


def freeze_backbone_if_fixed(model: nn.Module, s: MMSchedule) -> None:
    """Under `s.freeze_backbone`, stop gradients at the method's network (`PelaBackbone.body.model`).

    The pyramid neck that `attach_pyramid` added is new, so it trains with the heads.
    """
    if s.freeze_backbone:
        model.backbone.body.model.requires_grad_(False)


def param_schedulers(s: MMSchedule) -> list[dict[str, Any]]:
    warm = dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=max(1, s.warmup_iters))
    if s.milestones:
        return [warm, dict(type="MultiStepLR", by_epoch=s.by_epoch, begin=0, end=s.length,
                           milestones=list(s.milestones), gamma=0.1)]
    if s.by_epoch:
        return [warm, dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=True, begin=0, end=s.length)]
    return [warm, dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False,
                       begin=min(s.warmup_iters, s.length - 1), end=s.length)]


def fit_and_test(*, model: nn.Module, scope: str, schedule: MMSchedule, train_loader: dict, test_loader: dict,
                 evaluator: dict | list, work_dir: Path, seed: int, device: torch.device,
                 progress: bool = True) -> FitResult:
    """Fine-tune `model` with mmengine's Runner, then evaluate it once on the test split.

    A killed fine-tune resumes from the last checkpoint in `work_dir`; the
    checkpoint is loaded through torch's safe loader (see `tasks.mm.compat`).
    """
    import tasks.mm  # noqa: F401  (the ops stand-in before any mm* import)
    from tasks.mm.runner import DeviceRunner

    s = schedule
    work_dir.mkdir(parents=True, exist_ok=True)
    if s.by_epoch:
        train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=s.length, val_interval=s.length + 1)
    else:
        train_cfg = dict(type="IterBasedTrainLoop", max_iters=s.length, val_interval=s.length + 1)
    interval = s.checkpoint_interval or s.length
    hooks = dict(
        timer=dict(type="IterTimerHook"),
        logger=dict(type="LoggerHook", interval=s.log_interval if progress else 10**9,
                    log_metric_by_epoch=s.by_epoch),
        param_scheduler=dict(type="ParamSchedulerHook"),
        checkpoint=dict(type="CheckpointHook", by_epoch=s.by_epoch, interval=interval, max_keep_ckpts=1,
                        save_last=True),
        sampler_seed=dict(type="DistSamplerSeedHook"),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    world = distributed.world()
    if world.size > 1 and device.type == "cuda":
        # Batch statistics over every GPU's images, as the paper's multi-GPU fine-tunes (gloo has no SyncBN).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    # An explicit cuda:N also becomes the current device, which mmengine's AMP and logging assume.
    on_index = torch.cuda.device(device) if device.type == "cuda" and device.index is not None else nullcontext()
    with on_index:
        runner = DeviceRunner(
            device=device,
            model=model,
            work_dir=str(work_dir),
            train_dataloader=train_loader,
            train_cfg=train_cfg,
            optim_wrapper=optim_wrapper(s, device),
            param_scheduler=param_schedulers(s),
            test_dataloader=test_loader,
            test_cfg=dict(type="TestLoop"),
            test_evaluator=evaluator,
            default_hooks=hooks,
            log_processor=dict(by_epoch=s.by_epoch),
            default_scope=scope,
            randomness=dict(seed=seed),
            # Under torchrun mmengine joins the suite's process group (`common.distributed`) and shards
            # the loaders and the evaluation itself.
            launcher="pytorch" if world.size > 1 else "none",
            env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl" if device.type == "cuda" else "gloo")),
            log_level="INFO" if progress else "WARNING",
            resume=True,
            experiment_name=f"{scope}-{work_dir.name}-{time.strftime('%Y%m%d_%H%M%S')}-{id(model)}",
        )
        start = time.time()
        runner.train()
        metrics = runner.test()
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return FitResult({k: float(v) for k, v in metrics.items()}, runner.model, time.time() - start, peak)


class MMInference(nn.Module):
    """An mm model's inference path as `forward(image)`, so the efficiency measures can time and count it.

    It runs the model's own `predict` (for a detector: RPN, the three cascade
    stages, NMS and the mask head on the kept boxes), on images already
    normalised and padded, as the data preprocessor would hand them over.
    """

    def __init__(self, model: nn.Module, sample_cls: type) -> None:
        super().__init__()
        self.model = model
        self.sample_cls = sample_cls

    def forward(self, image: torch.Tensor) -> Any:
        h, w = image.shape[-2:]
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                    scale_factor=(1.0, 1.0))
        return self.model.predict(image, [self.sample_cls(metainfo=dict(meta)) for _ in range(image.shape[0])])


def train_step(model: nn.Module, scope: str, loader_cfg: dict) -> Callable[[], None]:
    """One forward + backward on one batch from `loader_cfg`, as a closure (for memory measurements).

    The batch is drawn once, up front, so only the step itself is measured; the
    gradients are dropped at the end so repeated calls start from the same state.
    On CUDA the step runs under bf16 autocast, as `fit_and_test`'s optimiser wrapper does.
    """
    import tasks.mm  # noqa: F401
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    cfg = dict(loader_cfg, num_workers=0, persistent_workers=False)
    with DefaultScope.overwrite_default_scope(scope):
        loader = Runner.build_dataloader(cfg, seed=0)
        batch = next(iter(loader))

    device_type = next(model.parameters()).device.type

    def step() -> None:
        model.train()
        with DefaultScope.overwrite_default_scope(scope), \
                torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            data = model.data_preprocessor(batch, True)
            losses = model(**data, mode="loss")
            loss, _ = model.parse_losses(losses)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def init_weights_quietly(model: nn.Module) -> None:
    """mm's `init_weights`, without its per-tensor INFO report (thousands of lines for Swin-B)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


class MMTask(Task):
    """A task fine-tuned and evaluated by an OpenMMLab toolbox over the student's feature pyramid.

    Subclasses give the scope, the model builder, the data loaders and the evaluator;
    this class runs the Runner, measures the inference path and the training step.
    """

    scope: ClassVar[str] = ""
    sample_cls_path: ClassVar[str] = ""  # "module:Class" of the toolbox's data sample
    needs = ("pyramid",)
    fine_tunes = True
    measure_scope = "models with task heads counted whole (backbone + neck + heads)"
    # Tables 2 and 3: the uncompressed model, PELA, plain SVD and the baselines (ToMe has no dense maps).
    paper_methods = ("dense", "svd", "pela", "lora", "pc_lora", "tinybert", "maskalign")
    columns = (Column("finetune.train_batch", "train batch"),
               Column("finetune.train_peak_mb", "train peak mem (MB)", "{:.0f}"))
    # Detectors keep a data-dependent number of boxes, so they are counted on real tensors.
    measure_options = {"flops_on_meta": False, "latency_warmup": 1}

    def build_model(self, backbone: nn.Module, data: TaskData, schedule: MMSchedule) -> nn.Module:
        raise NotImplementedError

    def loaders(self, data: TaskData, s: MMSchedule, *, workers: int, train_batch: int | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    def evaluator(self, data: TaskData, s: MMSchedule) -> dict[str, Any]:
        raise NotImplementedError

    def postprocess(self, raw: dict[str, float], s: MMSchedule) -> dict[str, float]:
        """The toolbox's metric dict as the task's metric names, in percent."""
        raise NotImplementedError

    def synthetic_spec(self, schedule: MMSchedule, img_size: int | None) -> dict[str, Any]:
        # Scenes are drawn at the size the model is measured at, whatever the pre-training size.
        return {"n_train": schedule.synthetic_train, "n_val": schedule.synthetic_val, "img_size": schedule.input_size,
                "generator": scenes.GENERATOR_VERSION,
                "labels": scenes.DENSE_LABEL_VERSION}

    def check_root(self, root: Path) -> None:
        if not Path(root).is_dir():
            raise PelaBenchError(f"--data {self.name}={root} does not exist ({self.layout})")

    def input_size(self, schedule: MMSchedule, data: TaskData) -> int:
        return schedule.input_size

    def describe_schedule(self, s: MMSchedule, batch: int | None = None) -> str:
        return f"{s.length} {'epochs' if s.by_epoch else 'iterations'}, batch {batch or s.batch_size}"

    def run(self, student: nn.Module, data: TaskData, schedule: MMSchedule, ctx: RunContext) -> TaskResult:
        from mmengine.runner import set_random_seed

        set_random_seed(ctx.seed)  # the heads are initialised from the global RNG
        model = self.build_model(trainable_copy(student).to(ctx.device), data, schedule)
        freeze_backbone_if_fixed(model, schedule)
        batch = ctx.train_batch or schedule.batch_size
        world = distributed.world().size
        if batch % world:
            raise PelaBenchError(f"{self.name}: the fine-tune's batch {batch} does not split over {world} processes")
        if world > 1 and batch // world < 2 and ctx.device.type != "cuda":
            # The heads' BatchNorm needs two images per process; SyncBN, which would pool them, is CUDA-only.
            raise PelaBenchError(f"{self.name}: batch {batch} over {world} CPU processes leaves {batch // world} image "
                                 "per process, too few for BatchNorm (SyncBN needs GPUs): run it in one process")
        # mmengine's batch is per process; the schedule's is the global one, whatever the number of GPUs.
        train, test = self.loaders(data, schedule, workers=ctx.workers, train_batch=batch // world)
        fit = fit_and_test(model=model, scope=self.scope, schedule=schedule, train_loader=train, test_loader=test,
                           evaluator=self.evaluator(data, schedule), work_dir=ctx.work_dir, seed=ctx.seed,
                           device=ctx.device, progress=ctx.progress)
        details: dict[str, Any] = {"train_batch": ctx.train_batch or schedule.batch_size,
                                   "schedule": asdict(schedule), "work_dir": str(ctx.work_dir),
                                   "data_audit": data.audit}
        if fit.peak_memory_bytes is not None:
            details["cuda_fit_peak_mb"] = fit.peak_memory_bytes / 2**20
        return TaskResult(self.postprocess(fit.metrics, schedule), fit.model, fit.seconds, details)

    def discard_resume_state(self, work_dir: Path) -> None:
        # mmengine's CheckpointHook writes `*.pth` and a `last_checkpoint` pointer to them.
        for path in [*Path(work_dir).glob("*.pth"), Path(work_dir) / "last_checkpoint"]:
            path.unlink(missing_ok=True)

    def example_inputs(self, data: TaskData, schedule: MMSchedule, model: nn.Module, batch_size: int
                       ) -> dict[str, torch.Tensor]:
        size = schedule.input_size
        return {"image": torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))}

    def measured_module(self, result: TaskResult) -> nn.Module:
        module_name, _, cls_name = self.sample_cls_path.partition(":")
        sample_cls = getattr(importlib.import_module(module_name), cls_name)
        return MMInference(result.model, sample_cls)

    def train_step(self, student: nn.Module, data: TaskData, schedule: MMSchedule, batch: int,
                   device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
        model = self.build_model(trainable_copy(student).to(device), data, schedule).to(device)
        freeze_backbone_if_fixed(model, schedule)
        loader, _ = self.loaders(data, schedule, workers=0, train_batch=batch)
        return model, train_step(model, self.scope, loader)
