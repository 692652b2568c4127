"""Input statistics of a model's linear layers on real data: what data-aware low-rank starts need.

SVD-LLM's whitening needs each layer's input second moment ``X X^T`` (the truncation
error of ``W S`` then equals the layer's output error on those inputs), ASVD its mean
absolute input per channel, and a FLOPs budget how many input rows (tokens) a layer
sees per sample. One pass of forward hooks over a few training batches of the teacher
collects all three; the suite caches the result per (teacher, data) in a stage of its
own, so every method and every option that needs it shares one collection.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from common.errors import PelaBenchError


@dataclass
class LayerStats:
    """One linear layer's inputs over the calibration batches (each input row is one token)."""

    second_moment: torch.Tensor  # (d_in, d_in): mean of x x^T over rows (summed in float64, kept in float32)
    mean_abs: torch.Tensor  # (d_in,): mean |x| per input channel
    rows: int  # input rows seen
    rows_per_sample: float  # tokens per sample: the layer's FLOPs are this x d_in x d_out per image

    def state(self) -> dict[str, Any]:
        return {"second_moment": self.second_moment, "mean_abs": self.mean_abs, "rows": self.rows,
                "rows_per_sample": self.rows_per_sample}


@dataclass
class Calibration:
    """`LayerStats` per linear layer name (the teacher's dotted names), and how many samples made them."""

    layers: dict[str, LayerStats]
    samples: int

    def get(self, name: str) -> LayerStats:
        if name not in self.layers:
            raise PelaBenchError(f"the calibration statistics have no layer {name!r} (they hold "
                                 f"{len(self.layers)} layers of another model?); recompute them")
        return self.layers[name]

    def save(self, path: Path) -> None:
        from common.io import atomic_save_torch

        atomic_save_torch({"samples": self.samples, "layers": {k: v.state() for k, v in self.layers.items()}}, path)

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            layers = {k: LayerStats(**v) for k, v in blob["layers"].items()}
            return cls(layers, int(blob["samples"]))
        except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as exc:
            raise PelaBenchError(f"calibration statistics {path} cannot be read ({exc}); delete the file's "
                                 f"stage folder to collect them again") from None


def collect_calibration(model: nn.Module, names: Iterable[str], batches: Iterable[Any],
                        forward: Callable[[Any], Any], progress: Callable[[Iterable[Any]], Iterable[Any]] = iter,
                        ) -> Calibration:
    """Run `forward(batch)` over `batches` with hooks on the linear layers `names` of `model`.

    Sums are kept in float64: thousands of rows of float32 outer products lose the small
    eigenvalues that whitening divides by.
    """
    names = list(names)
    sums: dict[str, list[Any]] = {}
    samples = 0
    handles = []

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + x.T @ x
            acc[1] = acc[1] + x.abs().sum(0)
            acc[2] += x.shape[0]
        return record

    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise PelaBenchError(f"calibration: {name!r} is a {type(module).__name__}, not a linear layer")
        handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in progress(batches):
                forward(batch)
                samples += len(batch["image"]) if isinstance(batch, dict) and "image" in batch else 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in names if n not in sums]
    if missing:
        raise PelaBenchError(f"calibration: no input reached {missing[:3]}{'...' if len(missing) > 3 else ''} "
                             f"during the forward passes")
    if samples == 0:
        raise PelaBenchError("calibration: no batch to collect statistics from")
    # Summed in float64, stored in float32 (half the disk: ~0.5 GB for DeiT-B); whitening's relative
    # damping of 1e-2 is far above float32's precision, and `input_scaling` works in float64 again.
    layers = {n: LayerStats((g / rows).float().cpu(), (a / rows).float().cpu(), int(rows), rows / samples)
              for n, (g, a, rows) in sums.items()}
    return Calibration(layers, samples)
