"""`results/tables/starting_points.md`: what the low-rank start and the rank allocation are worth at a
fixed size, before and after pre-training.

It reads the rows of factorising methods sized by a budget (``--set params=F`` or a ``--sweep`` of it),
one table per backbone, task and method (``svd``: no training; ``pela``: after the same pre-training):
a row per size, a column per start (``init``) and allocation (``alloc``), each cell the primary metric's
mean and spread over seeds, with its difference to the paper's own start (plain SVD at a uniform ratio)
and Welch's p over seeds. An untrained student varies over seeds only through its calibration images,
so a data-free start (plain SVD) has no spread at all; the evaluation set's own sampling noise is not in
the spread either (every cell is scored on the same images).

    python tools/run_suite.py --methods dense,svd,pela --sweep init=svd,whitened,asvd \\
        --sweep alloc=uniform,budget --sweep params=0.9,0.8,0.7,0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.stats import ALPHA, summarize, welch_p
from common.io import atomic_write_text
from reports.rows import number

INIT_ORDER = ("svd", "whitened", "asvd")
ALLOC_ORDER = ("uniform", "budget", "speed")
PAPER_START = ("svd", "uniform")


def _opts(row: dict[str, Any]) -> dict[str, Any]:
    return (row.get("config") or {}).get("method") or {}


def sized_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a factorising method sized by a parameter budget."""
    return [r for r in rows if number(_opts(r).get("params")) is not None and r.get("metrics")]


def _score(row: dict[str, Any]) -> float | None:
    return number(row["metrics"].get(row.get("primary_metric", "")))


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def render_starting_points(rows: list[dict[str, Any]]) -> str | None:
    sized = sized_rows(rows)
    if not sized:
        return None
    out = ["# Starting points: the low-rank start and the rank allocation at a fixed size", "",
           "Each cell: the primary metric, mean ± spread over seeds (n), then the difference to the paper's own "
           "start (`init=svd alloc=uniform`, plain SVD at one ratio) at the same size and Welch's p over seeds "
           f"(a difference is a finding only where p < {ALPHA}). `svd` rows are not trained at all; the other "
           "methods' rows had the same pre-training budget. `params` is the target fraction of the dense model's "
           "parameters; the measured fraction of each cell is in the second table. Written by "
           "`reports/starting_points.py` from the store.", ""]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in sized:
        key = (r["backbone"], r["task"], r.get("provenance"), r.get("budget"), r.get("teacher_seed"), r["method"])
        groups.setdefault(key, []).append(r)
    for (backbone, task, provenance, budget, teacher_seed, method), group in sorted(groups.items(), key=str):
        dense = [r for r in rows if r["method"] == "dense" and r["backbone"] == backbone and r["task"] == task
                 and r.get("provenance") == provenance and r.get("budget") == budget
                 and r.get("teacher_seed") == teacher_seed]
        dense_params = number((dense[0].get("efficiency") or {}).get("params_m")) if dense else None
        metric = group[0].get("primary_metric", "score")
        cells: dict[tuple[float, str, str], list[dict[str, Any]]] = {}
        for r in group:
            o = _opts(r)
            cells.setdefault((float(o["params"]), o.get("init", "svd"), o.get("alloc", "uniform")), []).append(r)
        columns = sorted({(i, a) for _, i, a in cells}, key=lambda c: (
            INIT_ORDER.index(c[0]) if c[0] in INIT_ORDER else 99, ALLOC_ORDER.index(c[1]) if c[1] in ALLOC_ORDER else 99))
        sizes = sorted({p for p, _, _ in cells}, reverse=True)
        teacher = summarize([s for s in (_score(r) for r in dense) if s is not None]) if dense else None
        out += [f"## {backbone} / {task} / `{method}` ({provenance}, budget {budget}, teacher seed {teacher_seed})", ""]
        if teacher is not None:
            out.append(f"The uncompressed teacher: {metric} {teacher.mean:.2f} ± {teacher.std:.2f} ({teacher.n}).")
        out += ["", "| params | " + " | ".join(f"`{i}` / `{a}`" for i, a in columns) + " |",
                "|---|" + "---|" * len(columns)]
        for size in sizes:
            ref = [s for s in (_score(r) for r in cells.get((size, *PAPER_START), [])) if s is not None]
            line = [f"{size:.0%}"]
            for col in columns:
                values = [s for s in (_score(r) for r in cells.get((size, *col), [])) if s is not None]
                if not values:
                    line.append("-")
                    continue
                s = summarize(values)
                text = f"{s.mean:.2f} ± {s.std:.2f} ({s.n})"
                if ref and col != PAPER_START:
                    text += f" {s.mean - summarize(ref).mean:+.2f}, {_fmt_p(welch_p(values, ref))}"
                line.append(text)
            out.append("| " + " | ".join(line) + " |")
        if dense_params:
            out += ["", "Measured fraction of the dense parameters:", "",
                    "| params | " + " | ".join(f"`{i}` / `{a}`" for i, a in columns) + " |",
                    "|---|" + "---|" * len(columns)]
            for size in sizes:
                line = [f"{size:.0%}"]
                for col in columns:
                    ps = [number((r.get("efficiency") or {}).get("params_m")) for r in cells.get((size, *col), [])]
                    ps = [p for p in ps if p is not None]
                    line.append(f"{sum(ps) / len(ps) / dense_params:.3f}" if ps else "-")
                out.append("| " + " | ".join(line) + " |")
        out.append("")
    return "\n".join(out)


def write_starting_points(rows: list[dict[str, Any]], results_dir: str | Path) -> list[Path]:
    text = render_starting_points(rows)
    if text is None:
        return []
    path = Path(results_dir) / "tables" / "starting_points.md"
    atomic_write_text(path, text)
    return [path]
