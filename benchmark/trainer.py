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
"""

from __future__ import annotations

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
    """Yields ``(epoch, index)`` in an order drawn from (seed, epoch), from position `start` on."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        for index in order[self.start:].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return self.n - self.start


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
) -> list[dict[str, float]]:
    """Optimise `params` on `loss_fn` over `data` (samples as dicts); returns per-epoch means of every term.

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
        _set_rng_state(state["rng"], device)
        if checkpoint.extra_state is not None:
            checkpoint.extra_state[1](state["extra"])
        log.info("%s: resuming from step %d of %d (%s)", desc, step, total, checkpoint.path)

    def save() -> None:
        atomic_save_torch({
            "total": total, "step": step, "history": history, "sums": sums, "seen": seen,
            "modules": [m.state_dict() for m in modules], "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": _rng_state(device),
            "extra": checkpoint.extra_state[0]() if checkpoint.extra_state is not None else {},
        }, checkpoint.path)

    sampler = EpochSampler(len(data), seed)
    # The loader's own generator only seeds its workers, which `SeededSamples` overrides per
    # sample; it keeps the loader from drawing on the global stream at each epoch start.
    loader = DataLoader(SeededSamples(data, seed), batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator(),
                        pin_memory=device.type == "cuda")
    for m in modules:
        m.train()
    last_save = time.monotonic()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=1.0)
    try:
        while step < total:
            epoch, offset = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, offset * batch_size)
            for batch in loader:
                if step >= total:
                    break
                batch = move_to(batch, device)
                if on_step is not None:
                    on_step(step / total)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    terms = loss_fn(batch)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                opt.step()
                sched.step()
                step += 1
                seen += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.update(1)
                bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()}, refresh=False)
                if step % steps_per_epoch == 0 or step == total:
                    history.append({k: v / max(1, seen) for k, v in sums.items()})
                    log.debug("%s epoch %d: %s", desc, len(history), history[-1])
                    sums, seen = {}, 0
                if checkpoint is not None and step < total and (
                        (checkpoint.every_steps and step % checkpoint.every_steps == 0)
                        or (checkpoint.every_seconds and time.monotonic() - last_save >= checkpoint.every_seconds)):
                    save()
                    last_save = time.monotonic()
    finally:
        bar.close()
    return history
