"""Reading the store for reports: checked rows, which of our backbones stands for which paper
model, and one run's rows (a backbone, task, data, budget and teacher seed) summarised over seeds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from benchmark.provenance import same_code
from benchmark.stats import Summary, summarize
from benchmark.store import ResultStore, teacher_seed
from benchmark.tables import get, variant_label
from common.errors import PelaBenchError

# What a report reads from every row; other fields are optional and shown as "-" when absent.
REQUIRED_FIELDS = ("backbone", "method", "task", "seed", "provenance", "budget", "metrics")

# The paper's models (as reports.paper keys them) and ours that stand for them, the exact model
# first: the first one with rows for a task is shown. The others are much smaller models of the
# same family that the suite trains on a CPU; the last one is what a "not run" note suggests.
STAND_INS: dict[str, tuple[str, ...]] = {
    "deit_base": ("deit_base", "deit_micro"),
    "swin_base": ("swin_base", "swin_micro"),
    "deit3_large": ("deit3_large",),
    "albef_base": ("albef_base", "albef_tiny"),
}

# Which of several runs of one backbone and task a paper table shows: real data before the
# synthetic world, the longest budget first.
_PROVENANCE_ORDER = ("real", "synthetic")
_BUDGET_ORDER = ("paper", "smoke", "tiny")


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results store, each checked for the fields reports read.

    A missing or empty store, a line that is not JSON and a row without a required field are
    errors naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise PelaBenchError(f"{path}: no results store there (run tools/run_suite.py --results "
                             f"{path.parent} first)")
    rows = ResultStore(path).rows()  # names the line that is not JSON
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise PelaBenchError(f"{path}: row {n} is not a JSON object")
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise PelaBenchError(f"{path}: row {n} lacks {', '.join(missing)}")
        if not isinstance(row["metrics"], dict):
            raise PelaBenchError(f"{path}: row {n}: 'metrics' is not an object")
    if not rows:
        raise PelaBenchError(f"{path}: the results store is empty")
    return rows


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summary(rows: Iterable[dict[str, Any]], value: str | Callable[[dict[str, Any]], Any]) -> Summary | None:
    """Mean, spread and count over the rows (seeds) that have the value; None when none has it."""
    pick = value if callable(value) else (lambda r: get(r, value))
    values = [v for v in (number(pick(r)) for r in rows) if v is not None]
    return summarize(values) if values else None


def device_label(row: dict[str, Any]) -> str:
    m = row.get("machine") or {}
    if m.get("gpu"):
        return f"GPU {m['gpu']}"
    if m.get("cpu"):
        return f"CPU {m['cpu']}"
    return str(row.get("device") or "unknown device")


def options_keys(options: str) -> set[str]:
    """The option names in a row's `options` ("alpha=0.5 ratio=2.0" -> {"alpha", "ratio"})."""
    return {tok.split("=", 1)[0] for tok in (options or "").split() if tok}


@dataclass
class Run:
    """The rows of one of our backbones on one task, one data provenance, budget and teacher seed."""
    paper_backbone: str
    backbone: str
    task: str
    provenance: str
    budget: str
    teacher_seed: int
    rows: list[dict[str, Any]]
    others: int = 0  # further runs of this backbone and task in the store, not shown

    @property
    def exact(self) -> bool:
        return self.backbone == self.paper_backbone

    def method_rows(self, method: str, recipe: str | None = None) -> list[dict[str, Any]]:
        """A method's rows over seeds, with its default options and recipe; a method only run with
        options (say a --ratio run) or another recipe shows its most-seeded variant instead, named with them.
        With `recipe`, that recipe's rows (default options) come first where the method has them."""
        mine = [r for r in self.rows if r["method"] == method]
        if recipe is not None:
            preferred = [r for r in mine if r.get("recipe") == recipe and not r.get("options")]
            if preferred:
                return preferred
        default = [r for r in mine if not variant_label(r)]
        if default or not mine:
            return default
        variants: dict[str, list] = {}
        for r in mine:
            variants.setdefault(variant_label(r), []).append(r)
        return max(sorted(variants.items()), key=lambda kv: len(kv[1]))[1]

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.rows})

    @property
    def devices(self) -> list[str]:
        return sorted({device_label(r) for r in self.rows})

    def describe(self, paper_name: str) -> str:
        """What ours is, in one line: the model, data, budget, seeds and machine."""
        if self.exact:
            model = f"`{self.backbone}` (the paper's {paper_name})"
        else:
            model = (f"`{self.backbone}`, standing in for {paper_name}: a much smaller model of its family, "
                     f"not {paper_name} (compare drops from the uncompressed model, not absolute numbers)")
        seeds = self.seeds
        seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        others = f"; {self.others} other run(s) of it in ../leaderboard.md" if self.others else ""
        sizes = sorted({get(r, "efficiency.input_size") for r in self.rows} - {None})
        size = f" · measured at {'/'.join(map(str, sizes))} px" if sizes else ""
        return (f"{model} · {self.provenance} data · budget {self.budget} · {seed_text} "
                f"(teacher seed {self.teacher_seed}) · {', '.join(self.devices)}{size}{others}")


def _preference(key: tuple[str, str, int], size: int) -> tuple:
    provenance, budget, t_seed = key
    rank = (_PROVENANCE_ORDER.index(provenance) if provenance in _PROVENANCE_ORDER else len(_PROVENANCE_ORDER),
            _BUDGET_ORDER.index(budget) if budget in _BUDGET_ORDER else len(_BUDGET_ORDER))
    return (*rank, -size, t_seed if isinstance(t_seed, int) else 0)


def select_run(rows: list[dict[str, Any]], paper_backbone: str, task: str) -> Run | None:
    """Our run that stands for `paper_backbone` on `task`, or None when the store has none."""
    for backbone in STAND_INS.get(paper_backbone, (paper_backbone,)):
        mine = [r for r in rows if r["backbone"] == backbone and r["task"] == task]
        if not mine:
            continue
        groups: dict[tuple[str, str, int], list] = {}
        for r in mine:
            groups.setdefault((r["provenance"], r["budget"], teacher_seed(r)), []).append(r)
        key = min(groups, key=lambda k: _preference(k, len(groups[k])))
        return Run(paper_backbone, backbone, task, *key, rows=groups[key], others=len(groups) - 1)
    return None


def suggested_backbone(paper_backbone: str) -> str:
    return STAND_INS.get(paper_backbone, (paper_backbone,))[-1]


def newest_source(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The code version of the most recently written row (rows without a timestamp count as oldest)."""
    rows = list(rows)
    if not rows:
        return None
    return max(rows, key=lambda r: str(r.get("timestamp") or "")).get("code")


def stale(rows: Iterable[dict[str, Any]], newest: dict[str, Any] | None) -> bool:
    """Whether any row ran another source than `newest` (a row that records none counts as other)."""
    return newest is not None and any(not same_code(r.get("code"), newest) for r in rows)
