"""This process's place in a distributed job, and the few collectives the suite needs.

A run started by ``torchrun`` (or by the Slurm launcher, which exports the same
variables) is one process per GPU: every process runs every stage, training
with DistributedDataParallel and evaluating its shard of each split, while only
rank 0 writes files (stage outputs, checkpoints, rows, tables). A run started by
plain ``python`` is a world of one, and every helper here is then a no-op, so
the single-process path needs no ``if`` of its own.

Process groups use NCCL where the run's device is a GPU and gloo on CPU.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from common.errors import PelaBenchError

log = logging.getLogger("pela_bench")

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether a launcher (torchrun, Slurm via submitit) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> World:
    """Join the process group the launcher describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``).

    Idempotent; a world of one when no launcher set ``WORLD_SIZE`` above 1.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    if not launched():
        return World()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise PelaBenchError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: "
                             "start distributed runs with torchrun or --launcher slurm")
    local_rank = int(os.environ["LOCAL_RANK"])
    gpu = device != "cpu" and torch.cuda.is_available()
    if gpu:
        if local_rank >= torch.cuda.device_count():
            raise PelaBenchError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if gpu else "gloo")
    w = world()
    log.info("distributed: rank %d of %d (%s)", w.rank, w.size, dist.get_backend())
    return w


def world() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main() -> bool:
    return world().main


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


def _encode(obj: Any) -> bytes:
    # Through torch.save: the object collectives' own pickling cannot rebuild tensors (RNG states) in torch 2.14.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _decode(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # our own ranks' objects


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank (any picklable value; tensors arrive on the CPU)."""
    if world().size == 1:
        return obj
    box = [_encode(obj) if world().main else None]
    dist.broadcast_object_list(box, src=0)
    return _decode(box[0])


def gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (tensors arrive on the CPU)."""
    w = world()
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, _encode(obj))
    return [_decode(b) for b in out]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place, returned for chaining)."""
    if world().size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def main_only(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0, its result on every rank; the others wait for it (a file rank 0 writes exists after)."""
    w = world()
    if w.size == 1:
        return fn()
    result = fn() if w.main else None
    # Broadcast also orders the ranks: nobody reads what rank 0 writes before it is written.
    return broadcast(result)


def shard_batches(n: int, batch_size: int) -> list[list[int]]:
    """This rank's evaluation batches: batch b of the single-process order goes to rank b % world.

    Whole batches, not samples, are dealt out, so every sample is evaluated in the
    same batch as in a single-process run and the gathered outputs are bitwise
    those of one process, whatever kernels pick by batch shape.
    """
    w = world()
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    return batches[w.rank::w.size]


def gather_batches(mine: Sequence[T]) -> list[T]:
    """Per-batch outputs of `shard_batches`' batches, gathered into the single-process batch order."""
    w = world()
    if w.size == 1:
        return list(mine)
    every = gather(list(mine))
    out: list[Any] = []
    for b in range(sum(len(part) for part in every)):
        out.append(every[b % w.size][b // w.size])
    return out


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader worker leaves the job's preemption signal (USR2, sent by Slurm to every process of a
    job step) to its main process: it inherits submitit's handler, and two processes checkpointing one
    job at once break its requeue."""
    import signal

    if hasattr(signal, "SIGUSR2"):
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
