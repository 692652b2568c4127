"""Factorised models against the speed-up their FLOPs promise, layer shape by layer shape and whole.

The FLOPs-ideal speed-up of a factorised layer is ``d_in d_out / (r (d_in + d_out))``; of a whole
model, its dense FLOPs over its factorised FLOPs (attention's own matmuls included, which do not
shrink). The measured speed-up is the dense latency over the factorised one; the report gives each
as a fraction of the ideal, at several batches and thread counts, so where a factorisation loses its
promise (small rows, odd ranks, launch overhead) shows up as a number.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from benchmark.efficiency import count_flops, measure_latency
from methods.lowrank import lowrank_modules
from methods.rank_alloc import time_layer

log = logging.getLogger("pela_bench")


@dataclass(frozen=True)
class Variant:
    """A factorised model to compare with the dense one: a label, a method and its options."""

    label: str
    method: str
    options: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """``svd`` or ``svd:rank_multiple=8,alloc=speed,params=0.55`` (values as JSON, else strings)."""
    import json

    from common.errors import PelaBenchError

    method, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise PelaBenchError(f"--variant {text!r}: expected METHOD[:KEY=VALUE,...]")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return Variant(text, method.strip(), options)


def layer_shapes(model: nn.Module, tokens: dict[str, float]) -> list[dict[str, Any]]:
    """The distinct (d_in, d_out, rank, tokens per image) of a factorised model's low-rank layers, with a count."""
    shapes: dict[tuple[int, int, int, float], int] = {}
    for name, layer in lowrank_modules(model).items():
        key = (layer.in_features, layer.out_features, layer.rank, tokens.get(name, 1.0))
        shapes[key] = shapes.get(key, 0) + 1
    return [{"d_in": i, "d_out": o, "rank": r, "tokens": t, "count": n} for (i, o, r, t), n in sorted(shapes.items())]


def layer_rows(shapes: list[dict[str, Any]], batches: list[int], threads: list[int], device: str,
               repeats: int, dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    """Dense and factorised latency of each layer shape at each batch (rows = batch x tokens) and thread count."""
    out = []
    previous = torch.get_num_threads()
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for shape in shapes:
                for batch in batches:
                    rows = max(1, round(batch * shape["tokens"]))
                    dense = time_layer(shape["d_in"], shape["d_out"], None, rows, device, repeats, dtype=dtype)
                    fact = time_layer(shape["d_in"], shape["d_out"], shape["rank"], rows, device, repeats,
                                      dtype=dtype)
                    ideal = shape["d_in"] * shape["d_out"] / (shape["rank"] * (shape["d_in"] + shape["d_out"]))
                    out.append({**shape, "batch": batch, "rows": rows, "threads": n_threads, "dense_ms": dense,
                                "factorised_ms": fact, "speedup": dense / fact, "ideal": ideal,
                                "of_ideal": dense / fact / ideal})
    finally:
        torch.set_num_threads(previous)
    return out


def model_rows(dense: nn.Module, students: dict[str, nn.Module], input_shape: Callable[[int], tuple[int, ...]],
               batches: list[int], threads: list[int], device: str, repeats: int,
               progress: Callable[[str], None] = lambda s: None,
               autocast: torch.dtype | None = None) -> list[dict[str, Any]]:
    """Whole-model latency, dense and each student, at each batch and thread count, against the FLOPs ideal.

    The dense model is timed before and after the students of each batch and thread count and the two
    medians averaged (their difference, `dense_drift`, shows how much the machine's speed moved): on a
    shared machine the speed of the cores drifts over minutes. `autocast`: time under `torch.autocast` to that dtype
    (bfloat16 on a GPU); FLOPs are counted without it.
    """
    def latency(model: nn.Module, shape: tuple[int, ...], n_threads: int) -> dict[str, Any]:
        ctx = torch.autocast(torch.device(device).type, dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            return measure_latency(model, shape, repeats=repeats, warmup=1, threads=n_threads, device=device)

    out = []
    for n_threads in threads:
        for batch in batches:
            shape = input_shape(batch)
            dense_flops = count_flops(dense, shape)["flops"]
            progress(f"dense batch {batch} threads {n_threads}")
            before = latency(dense, shape, n_threads)["median_ms"]
            timed = {}
            for label, student in students.items():
                progress(f"{label} batch {batch} threads {n_threads}")
                timed[label] = latency(student, shape, n_threads)["median_ms"]
            after = latency(dense, shape, n_threads)["median_ms"]
            dense_ms = (before + after) / 2
            for label, student in students.items():
                ideal = dense_flops / count_flops(student, shape)["flops"]
                speedup = dense_ms / timed[label]
                out.append({"variant": label, "batch": batch, "threads": n_threads, "dense_ms": dense_ms,
                            "dense_drift": abs(before - after) / dense_ms, "factorised_ms": timed[label],
                            "speedup": speedup, "ideal": ideal, "of_ideal": speedup / ideal})
    return out
