"""The project's one training loop: teachers and every method's pre-training use it.

AdamW, per-step cosine schedule with linear warm-up, gradient clipping, bf16
autocast on CUDA, a progress bar with every named loss term, and batches as
dicts of tensors (moved to the device whatever their nesting).

Deterministic and resumable: epoch e visits the samples in an order drawn from
(seed, e), and each sample is loaded under a random state seeded from (seed, e,
index), so its augmentation does not depend on the number of loader workers or
on where a run was interrupted. A checkpoint (model, optimiser, scheduler, RNG
states, step, loss history) is written atomically at a configurable interval; a
killed run given the same checkpoint path continues from it and ends with the
same weights as an uninterrupted one.

Distributed (`common.distributed`): the model trains under
DistributedDataParallel, each rank taking every world-th sample of the
single-process order, so one step's samples over all ranks are exactly the
single-process batch; with `accumulate` micro-batches per rank the step's
gradients are summed before one optimiser step. The schedule's `batch_size` is
the global batch either way, so results do not depend on how many GPUs shared
it. Loss terms are averaged over ranks at every step (one all-reduce, which also
carries rank 0's decision to checkpoint); rank 0 alone writes checkpoints,
which hold every rank's random state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from common import distributed
from common.batch import move_to
from common.errors import PelaBenchError
from common.io import atomic_save_torch

log = logging.getLogger("pela_bench")

LossFn = Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class OptimConfig:
    epochs: float = 10
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 1.0
    amp: bool = True  # bf16 autocast, only where a GPU exists


@dataclass(frozen=True)
class Layout:
    """How one optimiser step's global batch is split: over the ranks, then into micro-batches.

    Neither changes what is computed (up to float summation order), so neither is part of a
    stage's hash; `micro_batch` caps the samples one process holds at once (memory), and
    accumulation makes up the rest of the global batch.
    """

    micro_batch: int | None = None  # None: global batch / world size, in one forward
    compile: bool = False  # torch.compile the trained module (same weights as eager; speed unmeasured here)
    channels_last: bool = False  # 4-D image batches and the model in channels-last memory format

    def split(self, global_batch: int, world: int, desc: str) -> tuple[int, int]:
        """(per-rank micro-batch, accumulation steps) for `global_batch` over `world` ranks."""
        if global_batch % world:
            raise PelaBenchError(f"{desc}: the global batch {global_batch} does not split over {world} processes; "
                                 "choose --global-batch as a multiple of the number of processes")
        per_rank = global_batch // world
        cap = self.micro_batch or per_rank
        if cap < 1:
            raise PelaBenchError(f"--micro-batch must be >= 1, got {cap}")
        accumulate = next(a for a in range(1, per_rank + 1) if per_rank % a == 0 and per_rank // a <= cap)
        return per_rank // accumulate, accumulate


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often a training run saves its resumable state (0: that trigger is off)."""

    path: Path
    every_steps: int = 0
    every_seconds: float = 600.0
    # Extra state the loss function owns (a method's own random generator): (get, set).
    extra_state: tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]] | None = None


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class SeededSamples(Dataset):
    """Loads sample `index` of epoch `epoch` under a random state of its own.

    Keys are ``(epoch, index)`` pairs from `EpochSampler`. The global state is forked,
    so loading in the main process leaves the training loop's random stream alone.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (samples are made on the CPU): `torch.manual_seed` would also
            # visit every accelerator backend, 70 times slower per sample.
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` in an order drawn from (seed, epoch), from position `start` on.

    As torch's DistributedSampler, rank r of a world of w takes every w-th position from
    r on; unlike it, the order does not depend on w, so the samples of one global batch
    are the same whatever the number of ranks.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        for index in order[self.start + self.rank::self.world].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self.n, self.world))


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if device.type == "cuda":  # the training device's generator only: other GPUs are not this run's
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


class _LossModule(nn.Module):
    """The trained modules with the loss as their forward, so DistributedDataParallel can wrap a loss
    that reaches the model any way it likes (hooks, several calls, a teacher beside it)."""

    def __init__(self, modules: list[nn.Module], loss_fn: LossFn) -> None:
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.loss_fn = loss_fn

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.loss_fn(batch)


def _channels_last(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.contiguous(memory_format=torch.channels_last) if batch.ndim == 4 else batch
    if isinstance(batch, Mapping):
        return {k: _channels_last(v) for k, v in batch.items()}
    return batch


def train(
    params: Iterable[nn.Parameter],
    loss_fn: LossFn,
    data: Dataset,
    cfg: OptimConfig,
    *,
    batch_size: int,
    seed: int,
    workers: int = 0,
    modules: Iterable[nn.Module] = (),
    device: torch.device | str = "cpu",
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[float], None] | None = None,
    checkpoint: Checkpointing | None = None,
    layout: Layout = Layout(),
) -> list[dict[str, float]]:
    """Optimise `params` on `loss_fn` over `data` (samples as dicts); returns per-epoch means of every term.

    `batch_size` is the global batch of one optimiser step (`layout` says how it is split).
    `modules` are put in train mode and are what a checkpoint saves (the trainable
    model); anything else the loss touches (a frozen teacher) stays as the caller
    left it. `on_step(progress)` runs before every step with progress = step / total
    (PC-LoRA's decay hangs on it).
    """
    device = torch.device(device)
    modules = list(modules)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    world = distributed.world()
    micro, accumulate = layout.split(batch_size, world.size, desc)
    if world.size > 1 and not modules:
        raise ValueError(f"{desc}: distributed training needs the trained modules (`modules`) to wrap")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases and norms, as in timm
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps_per_epoch = len(data) // batch_size
    if steps_per_epoch == 0:
        raise PelaBenchError(f"{desc}: the training split holds {len(data)} samples, fewer than one batch ({batch_size})")
    total = max(1, round(cfg.epochs * steps_per_epoch))
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, warmup, cfg.min_lr_ratio))
    use_amp = cfg.amp and device.type == "cuda"
    if world.size > 1 and world.rank > 0:
        # Each rank its own dropout and drop-path draws; sample augmentation is seeded per sample
        # (`SeededSamples`) and a method's own generator per run, so both stay as in one process.
        torch.manual_seed(sample_seed(seed, 2**20 + world.rank, 0))

    history: list[dict[str, float]] = []
    sums: dict[str, float] = {}
    seen = 0
    step = 0
    if checkpoint is not None and checkpoint.path.is_file():
        state = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
        if state["total"] != total or len(state["modules"]) != len(modules):
            raise PelaBenchError(f"{checkpoint.path} was saved by a different run ({state['total']} steps, "
                                 f"{len(state['modules'])} modules); delete it to start over")
        for m, m_state in zip(modules, state["modules"]):
            m.load_state_dict(m_state)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, history, sums, seen = state["step"], state["history"], state["sums"], state["seen"]
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rng) == world.size:
            _set_rng_state(rng[world.rank], device)
        else:  # saved by a run of another world size: data order and weights carry over, dropout draws do not
            log.warning("%s: checkpoint of %d process(es) resumed by %d; dropout draws restart", desc, len(rng),
                        world.size)
            _set_rng_state(rng[0], device)
            if world.rank > 0:
                torch.manual_seed(sample_seed(seed, 2**20 + world.rank, step))
        if checkpoint.extra_state is not None:
            checkpoint.extra_state[1](state["extra"])
        log.info("%s: resuming from step %d of %d (%s)", desc, step, total, checkpoint.path)

    def save() -> None:
        rng = distributed.gather(_rng_state(device))  # collective: every rank reaches it at the same step
        if not world.main:
            return
        atomic_save_torch({
            "total": total, "step": step, "history": history, "sums": sums, "seen": seen,
            "modules": [m.state_dict() for m in modules], "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": rng if world.size > 1 else rng[0],
            "extra": checkpoint.extra_state[0]() if checkpoint.extra_state is not None else {},
        }, checkpoint.path)

    sampler = EpochSampler(len(data), seed, world.rank, world.size)
    # The loader's own generator only seeds its workers, which `SeededSamples` overrides per
    # sample; it keeps the loader from drawing on the global stream at each epoch start.
    loader = DataLoader(SeededSamples(data, seed), batch_size=micro, sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator(),
                        pin_memory=device.type == "cuda", worker_init_fn=distributed.loader_worker_init)
    for m in modules:
        m.train()
        if layout.channels_last:
            m.to(memory_format=torch.channels_last)
    forward: Callable[[Mapping[str, Any]], dict[str, torch.Tensor]] = loss_fn
    ddp: nn.Module | None = None
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: students whose graph changes in training (PC-LoRA's faded weights,
        # heads a loss term skips) would otherwise stall the gradient reduction.
        ddp = DistributedDataParallel(_LossModule(modules, loss_fn),
                                      device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=True)
        forward = ddp
    if layout.compile:
        forward = torch.compile(forward)
    last_save = time.monotonic()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress or not world.main, leave=False,
               dynamic_ncols=True, mininterval=1.0)
    try:
        while step < total:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, offset * batch_size)
            batches = iter(loader)
            while step < total:
                micro_batches = [b for _, b in zip(range(accumulate), batches)]
                if len(micro_batches) < accumulate:
                    break  # the epoch's last, partial global batch is dropped, as by a single process
                if on_step is not None:
                    on_step(step / total)
                opt.zero_grad(set_to_none=True)
                local: dict[str, torch.Tensor] = {}
                for i, batch in enumerate(micro_batches):
                    batch = move_to(batch, device)
                    if layout.channels_last:
                        batch = _channels_last(batch)
                    # Gradients are reduced over ranks once per step, on the last micro-batch.
                    sync = ddp.no_sync() if ddp is not None and i < accumulate - 1 else contextlib.nullcontext()
                    with sync:
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                            terms = forward(batch)
                        (terms["loss"] / accumulate).backward()
                    for k, v in terms.items():
                        local[k] = local.get(k, 0) + v.detach().float() / accumulate
                names = sorted(local)
                want_save = checkpoint is not None and step + 1 < total and bool(
                    (checkpoint.every_steps and (step + 1) % checkpoint.every_steps == 0)
                    or (checkpoint.every_seconds and time.monotonic() - last_save >= checkpoint.every_seconds))
                # One all-reduce: the terms' means over ranks and rank 0's checkpoint decision.
                on = local["loss"].device
                packed = torch.stack([local[k].reshape(()).to(on) for k in names]
                                     + [torch.tensor(float(want_save and world.main), device=on)])
                packed = distributed.all_reduce_sum(packed).cpu()
                values = dict(zip(names, (packed[:-1] / world.size).tolist()))
                want_save = bool(packed[-1] > 0)
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(f"{desc}: loss became {values['loss']} at step {step}")
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                opt.step()
                sched.step()
                step += 1
                seen += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.update(1)
                bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()}, refresh=False)
                if step % steps_per_epoch == 0 or step == total:
                    history.append({k: v / max(1, seen) for k, v in sums.items()})
                    log.debug("%s epoch %d: %s", desc, len(history), history[-1])
                    sums, seen = {}, 0
                if want_save:
                    save()
                    last_save = time.monotonic()
    finally:
        bar.close()
    return history
