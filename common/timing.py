"""The one timing loop: every latency the project reports (a whole model, one layer) is measured here."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int, device: torch.device | str = "cpu") -> list[float]:
    """Wall times (ms, sorted) of `repeats` calls of `fn` after `warmup` untimed ones, under inference mode.
    On CUDA every call is bracketed by a synchronize, so the time is the kernels' and not just their launch."""
    device = torch.device(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return sorted(times)
