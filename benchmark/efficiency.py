"""Efficiency, measured rather than assumed: parameters, FLOPs, latency and peak memory.

FLOPs are 2 x MAC with attention included. They are counted with
`torch.utils.flop_counter.FlopCounterMode` on a meta-device copy of the model and
under the math attention kernel: on CPU the fused attention kernel has no FLOP
formula and would be silently dropped (that is how DeiT-B reads 33.7 G in the
paper's Table 1 instead of its full 35.1 G).
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from common.errors import PelaBenchError
from common.params import count_params
from common.timing import sync as _sync
from common.timing import time_calls

Shape = tuple[int, ...]
# A model's example inputs: a shape (one random image batch, passed positionally) or the
# keyword inputs of its forward (``{"image": ..., "text_ids": ...}``), as a task gives them.
Inputs = Shape | dict[str, torch.Tensor]


def _call(model: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor]) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _materialise(inputs: Inputs, device: torch.device | str) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return _fixed_input(tuple(inputs), torch.device(device))


def _on_meta(inputs: Inputs) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(inputs, dict):
        return {k: torch.empty_like(v, device="meta") for k, v in inputs.items()}
    return torch.empty(tuple(inputs), device="meta")


def _batch_of(inputs: Inputs) -> int:
    if isinstance(inputs, dict):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs[0])


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` whose parameters and buffers live on the meta device.

    The memo hands `deepcopy` a meta stand-in for every parameter and buffer, so no
    weight is ever copied: ``copy.deepcopy(model).to("meta")`` would first duplicate
    all of them (1.2 GB and about 4 s for DeiT-III-Large) only to throw them away.
    Tied weights map to one stand-in and stay tied.
    """
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        stand_in = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(stand_in, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else stand_in
    return copy.deepcopy(model, memo).to("meta")


def count_flops(model: nn.Module, input_shape: Inputs = (1, 3, 224, 224), *, on_meta: bool = True) -> dict[str, int]:
    """FLOPs (2 x MAC) and MACs of one forward pass on `input_shape` (a shape or keyword inputs); `model` is not touched.

    The count runs on a meta-device copy: shapes only, no arithmetic, so even
    DeiT-III-Large counts in well under a second and the model's own device and
    weights do not matter. The math SDPA kernel is forced because a fused kernel
    (CPU flash attention) has no FLOP formula and its two attention matmuls would
    vanish from the total (DeiT-B: 33.7 G instead of 35.1 G). On the meta device
    PyTorch takes the math path today; the context keeps it that way whatever the
    dispatcher prefers in a later release.
    """
    if on_meta:
        run_model, x = _meta_copy(model).eval(), _on_meta(input_shape)
    else:
        # Models whose work depends on values (detectors: NMS keeps a data-dependent number of
        # boxes) cannot run on shapes alone; they are counted on the fixed random input.
        run_model, x = model.eval(), _materialise(input_shape, next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        _call(run_model, x)
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2}


def _fixed_input(input_shape: Shape, device: torch.device) -> torch.Tensor:
    """The same random batch in every call, so data-dependent models (token merging) are comparable."""
    return torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(device)


def measure_latency(model: nn.Module, input_shape: Inputs, *, repeats: int = 20, warmup: int = 3,
                    threads: int | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median and p90 wall time (ms) of one inference forward at `input_shape`.

    Median and p90 rather than the mean: on a shared machine a few runs are slowed
    by other work, and they would drag a mean while leaving the median alone.
    `threads` sets torch's intra-op threads for the measurement only; the caller's
    setting is restored. On CUDA every run is bracketed by a synchronize, so the
    time is the kernels' and not just their launch.
    """
    if repeats < 1 or warmup < 0:
        raise PelaBenchError(f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if threads is not None and threads < 1:
        raise PelaBenchError(f"threads must be >= 1, got {threads}")
    device = torch.device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    x = _materialise(input_shape, device)
    try:
        times = time_calls(lambda: _call(model, x), repeats=repeats, warmup=warmup, device=device)
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    batch = _batch_of(input_shape)
    return {"median_ms": median, "p90_ms": p90, "ms_per_img": median / batch, "batch_size": batch,
            "threads": previous if threads is None else threads, "device": str(device), "repeats": repeats}


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of storages created inside the mode that are still alive.

    CPU tensors have no allocator statistics. Every op's outputs pass through here;
    a new storage adds its size and a weakref finalizer subtracts it when the storage
    is freed (PyTorch keeps one Python object per storage, so the finalizer fires when
    the memory is released, not when a temporary wrapper dies). An output that shares
    storage with one of the op's inputs is not an allocation: a view or an in-place
    result of an activation (already counted) or of a parameter (counted in
    `param_bytes`; ``weight.t()`` must not add the weight a second time).
    Allocations inside a fused kernel that never surface as an op output (its
    scratch space) are not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._seen or key in inputs:
                continue
            self._seen.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, nbytes)
        return out


def _activation_peak(fn: Callable[[], Any], device: torch.device) -> tuple[int, str]:
    """Peak bytes that `fn` allocates above what was live before it (input batches excluded)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda_allocator"
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tracker.peak, "dispatch_tracking"


def _resident_bytes(model: nn.Module) -> int:
    return (sum(p.numel() * p.element_size() for p in model.parameters())
            + sum(b.numel() * b.element_size() for b in model.buffers()))


def measure_peak_memory(model: nn.Module, input_shape: Inputs, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Peak memory of one inference forward: parameters + buffers + the live activations' peak.

    `param_bytes` includes buffers (they are resident too). On CUDA the caching
    allocator's peak above what was allocated before the forward is the activation
    peak. On CPU there is no such statistic, so `_LiveTensorBytes` follows every
    storage the forward creates and frees; the input batch itself is not counted
    on either device.
    """
    device = torch.device(device)
    param_bytes = _resident_bytes(model)
    was_training = model.training
    model.eval()
    x = _materialise(input_shape, device)

    def forward() -> None:
        with torch.inference_mode():
            _call(model, x)

    try:
        activation, method = _activation_peak(forward, device)
    finally:
        model.train(was_training)
    return {"peak_bytes": param_bytes + activation, "param_bytes": param_bytes,
            "activation_peak_bytes": activation, "method": method}


def measure_train_memory(model: nn.Module, step: Callable[[], None], device: str | torch.device = "cpu"
                         ) -> dict[str, Any]:
    """Peak memory of one training step: weights + AdamW's two moments + the step's own peak.

    `step` runs one forward and backward on a batch it already holds (it should
    drop the gradients at the end). Gradients and activations are measured; the
    optimiser's state is added as two fp32 copies of the trainable parameters, so
    the figure is the same whether or not an optimiser has stepped yet.
    """
    device = torch.device(device)
    param_bytes = _resident_bytes(model)
    optimizer_bytes = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    activation, method = _activation_peak(step, device)
    return {"peak_bytes": param_bytes + optimizer_bytes + activation, "param_bytes": param_bytes,
            "optimizer_state_bytes": optimizer_bytes, "step_peak_bytes": activation, "method": method}


def measure_train_step(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], *, batch_size: int,
                       repeats: int = 5, warmup: int = 2, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median wall time and peak memory of one optimisation step (forward, backward, AdamW) of `model`.

    `loss_fn(model)` computes the loss on a batch it holds. The model is trained in place:
    pass a copy. Memory is `measure_train_memory`'s (weights, AdamW's moments, the step's peak).
    """
    if repeats < 1 or warmup < 0:
        raise PelaBenchError(f"a training step needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    device = torch.device(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)

    def forward_backward() -> None:
        loss_fn(model).backward()
        for p in params:
            p.grad = None

    memory = measure_train_memory(model, forward_backward, device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    step_ms = statistics.median(times)
    return {"train_step_ms": step_ms, "train_ms_per_img": step_ms / batch_size, "train_batch": batch_size,
            "train_peak_mb": memory["peak_bytes"] / 2**20, "train_mem_method": memory["method"],
            "train_step_repeats": repeats}


def measure_all(model: nn.Module, input_shape: Inputs | Callable[[int], Inputs], *, latency_repeats: int = 20,
                threads: int | None = None, device: str | torch.device = "cpu", flops_on_meta: bool = True,
                latency_warmup: int = 3, latency_batch: int | None = None) -> dict[str, float]:
    """Everything a results row reports, flat: params, FLOPs (at batch 1), latency, peak memory.

    `input_shape` is a shape, keyword inputs, or a function of the batch size that returns
    either (a task's `example_inputs`); FLOPs are counted per image, at batch 1.
    """
    if callable(input_shape):
        make = input_shape
        input_shape = make(latency_batch or 1)
        one = make(1)
    else:
        one = ({k: v[:1] for k, v in input_shape.items()} if isinstance(input_shape, dict)
               else (1, *input_shape[1:]))
    flops = count_flops(model, one, on_meta=flops_on_meta)
    latency = measure_latency(model, input_shape, repeats=latency_repeats, warmup=latency_warmup, threads=threads,
                              device=device)
    memory = measure_peak_memory(model, input_shape, device=device)
    return {
        "params_m": count_params(model) / 1e6,
        "gflops": flops["flops"] / 1e9,
        "gmacs": flops["macs"] / 1e9,
        "latency_ms": latency["median_ms"],
        "latency_p90_ms": latency["p90_ms"],
        "latency_ms_per_img": latency["ms_per_img"],
        "latency_batch": latency["batch_size"],
        "latency_threads": latency["threads"],
        "peak_mem_mb": memory["peak_bytes"] / 2**20,
        "activation_peak_mb": memory["activation_peak_bytes"] / 2**20,
    }
