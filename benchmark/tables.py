"""Leaderboards from the results store: `results/leaderboard.{md,csv}` (the figures: `reports.figures`).

Synthetic and real-data rows go in separate sections and are never ranked together.
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.config import REFERENCE_METHOD
from benchmark.provenance import code_label, code_version, same_code
from benchmark.stats import ALPHA, summarize, welch_p
from benchmark.store import teacher_seed
from benchmark.tradeoff import pareto_optimal, shrinks
from common.io import atomic_write_text
from methods.pela_recipes import DEFAULT_RECIPE

# (row path, column header, format). Each row also carries its task's own columns
# (metrics and extras such as a fine-tune's batch), placed after the method's.
LEAD_COLUMNS: list[tuple[str, str, str]] = [
    ("method", "method", "{}"),
    ("options", "options", "{}"),
    ("recipe", "recipe", "{}"),  # PELA's: official or paper (results/paper/recipes.md)
]
EFFICIENCY_COLUMNS: list[tuple[str, str, str]] = [
    ("efficiency.params_m", "params (M)", "{:.3f}"),
    ("efficiency.gflops", "GFLOPs", "{:.4f}"),
    ("efficiency.latency_ms_per_img", "latency (ms/img)", "{:.2f}"),
    ("efficiency.peak_mem_mb", "peak mem (MB)", "{:.1f}"),
    ("pretrain_seconds", "pre-train (s)", "{:.0f}"),
    ("train_seconds", "fine-tune (s)", "{:.0f}"),
]
# Rows stored before tasks described their own columns (no "columns" field).
_LEGACY_TASK_COLUMNS = [("metrics.top1", "top-1 (%)", "{:.2f}"), ("metrics.top5", "top-5 (%)", "{:.2f}"),
                        ("metrics.mIoU", "mIoU (%)", "{:.2f}"), ("metrics.AP_box", "AP box", "{:.2f}"),
                        ("metrics.AP_mask", "AP mask", "{:.2f}")]
STALE_MARK = "\u2020"  # dagger: the row was produced by another code version than this checkout's
BETTER, WORSE = "\u25b2", "\u25bc"  # beyond the seeds' noise, better / worse than the reference


def get(row: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a row (``efficiency.params_m``); None where it is absent."""
    cur: Any = row
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if k in ("config", "columns"):
            continue
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _task_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    columns: list[tuple[str, str, str]] = []
    for row in rows:
        for col in row.get("columns") or _LEGACY_TASK_COLUMNS:
            if tuple(col) not in columns:
                columns.append(tuple(col))
    return columns


def _stale(row: dict[str, Any], current: dict[str, Any] | None) -> bool:
    if current is None:
        return False
    return not same_code(row.get("code"), current)


def variant_label(row: dict[str, Any]) -> str:
    """A row's options, and its recipe where it is not the default one: what tells a method's lines apart."""
    recipe = row.get("recipe")
    return " ".join(filter(None, [row.get("options") or "",
                                  f"recipe={recipe}" if recipe and recipe != DEFAULT_RECIPE else ""]))


def _method_key(row: dict[str, Any]) -> tuple[str, str]:
    return row["method"], variant_label(row)


def reference_method(rows: list[dict[str, Any]]) -> str | None:
    """The row every other is tested against: PELA with its defaults, else the uncompressed model."""
    present = {_method_key(r) for r in rows}
    return next((m for m in ("pela", "dense") if (m, "") in present), None)


def _mean_row(rows: list[dict[str, Any]], paths: list[str]) -> dict[str, Any]:
    """The first seed's row with each numeric value at `paths` replaced by its mean over `rows`."""
    out = copy.deepcopy(rows[0])
    for path in paths:
        values = [get(r, path) for r in rows]
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric and len(numeric) == len(values) and len(set(numeric)) > 1:  # equal values stay as they are
            cur = out
            *parents, leaf = path.split(".")
            for part in parents:
                cur = cur[part]
            cur[leaf] = sum(numeric) / len(numeric)
    return out


def _delta_cell(values: list[float], ref_values: list[float] | None, sign: int) -> str:
    if ref_values is None or not values:
        return "-"
    delta = summarize(values).mean - summarize(ref_values).mean
    p = welch_p(values, ref_values)
    mark = "" if p is None or p >= ALPHA else (BETTER if sign * delta > 0 else WORSE)
    return f"{delta:+.2f}{mark}"


@dataclass
class Line:
    """One method (with its options) of a section: its seeds' rows and where it stands."""
    key: tuple[str, str]
    rows: list[dict[str, Any]]
    scores: list[float]
    params: float | None
    gflops: float | None
    shrinks: bool | None = None  # a compression of the uncompressed model (benchmark.tradeoff.shrinks)
    rank: int | None = None  # among the compression methods only
    kept: dict[str, float | None] = field(default_factory=dict)  # % of dense: score, params, gflops
    pareto: dict[str, bool] = field(default_factory=dict)  # cost name -> on the front of score vs it

    @property
    def mean(self) -> float | None:
        return summarize(self.scores).mean if self.scores else None


def _mean_of(rows: list[dict[str, Any]], path: str) -> float | None:
    values = [v for v in (get(r, path) for r in rows) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(values) / len(values) if values else None


def _pct(value: float | None, ref: float | None) -> float | None:
    return None if value is None or not ref else 100.0 * value / ref


def section_lines(rows: list[dict[str, Any]]) -> list[Line]:
    """A section's lines: the ranked compression methods first (best first), then every line that
    does not shrink the model (by mean score). Without an uncompressed line nothing can be told
    apart, and every line is ranked as one list."""
    primary = rows[0].get("primary_metric", "top1")
    sign = 1 if rows[0].get("higher_is_better", True) else -1
    by_method: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        by_method.setdefault(_method_key(r), []).append(r)
    lines = [Line(key, group, [v for v in (get(r, f"metrics.{primary}") for r in group) if v is not None],
                  _mean_of(group, "efficiency.params_m"), _mean_of(group, "efficiency.gflops"))
             for key, group in by_method.items()]
    dense = next((ln for ln in lines if ln.key == (REFERENCE_METHOD, "")), None)
    for ln in lines:
        if dense is not None:
            ln.shrinks = shrinks(ln.params, ln.gflops, dense.params, dense.gflops)
            ln.kept = {"score": _pct(ln.mean, dense.mean), "params": _pct(ln.params, dense.params),
                       "gflops": _pct(ln.gflops, dense.gflops)}
    for cost in ("params", "gflops"):
        scored = [ln for ln in lines if ln.mean is not None and getattr(ln, cost) is not None]
        flags = pareto_optimal([(ln.mean, getattr(ln, cost)) for ln in scored], sign > 0)
        for ln, flag in zip(scored, flags):
            ln.pareto[cost] = flag

    def by_score(ln: Line) -> float:
        return -sign * ln.mean if ln.mean is not None else float("inf")

    ranked = sorted((ln for ln in lines if dense is None or ln.shrinks), key=by_score)
    for rank, ln in enumerate(ranked, 1):
        ln.rank = rank
    return ranked + sorted((ln for ln in lines if ln.rank is None), key=by_score)


def _pareto_cell(line: Line) -> str:
    on = [name for cost, name in (("params", "params"), ("gflops", "GFLOPs")) if line.pareto.get(cost)]
    return ", ".join(on) if on else "-"


def _section(rows: list[dict[str, Any]], primary: str, current_code: dict[str, Any] | None = None) -> list[str]:
    """The compression methods ranked in one table, then the models that do not shrink in a second,
    unranked one: a line per method (and options), its seeds' rows averaged; the primary metric as
    mean +- std with n, the share of the uncompressed model's score and costs it keeps, the costs on
    whose Pareto front it sits, and its difference from the reference method, marked where it is
    beyond noise."""
    sign = 1 if rows[0].get("higher_is_better", True) else -1
    # A method's own flags (PELA: which loss terms are on), as it declares them in `table_fields`.
    flags = list(dict.fromkeys(k for r in rows for k in (r.get("ablation") or {})))
    flag_columns = [(f"ablation.{k}", f"L_{k}", "{}") for k in flags]
    task_columns = _task_columns(rows)
    candidates = LEAD_COLUMNS + flag_columns + task_columns + EFFICIENCY_COLUMNS
    always = {"method", "efficiency.params_m", "efficiency.gflops", "efficiency.latency_ms_per_img",
              "efficiency.peak_mem_mb", "pretrain_seconds", *(c[0] for c in task_columns if c[0].startswith("metrics."))}
    cols = [c for c in candidates if c[0] in always or any(get(r, c[0]) not in (None, "", {}, 0, 0.0) for r in rows)]
    primary_path = f"metrics.{primary}"
    lines = section_lines(rows)
    ref = reference_method(rows)
    ref_line = next((ln for ln in lines if ln.key == (ref, "")), None)
    has_dense = any(ln.key == (REFERENCE_METHOD, "") for ln in lines)
    kept_headers = ["score kept %", "params kept %", "GFLOPs kept %"] if has_dense else []
    header = ("| rank | " + " | ".join(h for _, h, _ in cols) + " | " + "".join(h + " | " for h in kept_headers)
              + f"Pareto | n | vs {ref or '-'} |")
    rule = "|" + "---|" * (len(cols) + len(kept_headers) + 4)

    def table_line(ln: Line) -> str:
        mean = _mean_row(ln.rows, [c[0] for c in cols])
        cells = []
        for path, _, fmt in cols:
            cell = _fmt(get(mean, path), fmt)
            if path == primary_path and len(ln.rows) > 1 and ln.scores:
                cell += f" ± {_fmt(summarize(ln.scores).std, fmt)}"
            cells.append(cell)
        if any(_stale(r, current_code) for r in ln.rows):
            cells[0] += f" {STALE_MARK}"
        if has_dense:
            cells += [_fmt(ln.kept.get(k), "{:.1f}") for k in ("score", "params", "gflops")]
        vs = "ref" if ln is ref_line else _delta_cell(ln.scores, ref_line.scores if ref_line else None, sign)
        rank = str(ln.rank) if ln.rank is not None else "-"
        return f"| {rank} | " + " | ".join(cells) + f" | {_pareto_cell(ln)} | {len(ln.rows)} | {vs} |"

    out = [header, rule, *(table_line(ln) for ln in lines if ln.rank is not None)]
    rest = [ln for ln in lines if ln.rank is None]
    if rest:
        out += ["", "**Not compressed** (not ranked): the uncompressed model, and lines that do not cut its "
                "parameters or GFLOPs or that grow either:", "", header, rule, *(table_line(ln) for ln in rest)]
    return out


def _seed_label(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))


def render_markdown(rows: list[dict[str, Any]], current_code: dict[str, Any] | None = None) -> str:
    """The leaderboard; with `current_code`, rows from another code version are marked."""
    out = ["# pela-bench leaderboard", ""]
    if not rows:
        return "\n".join(out + ["No results yet.", ""])
    out += [f"Each line is one method over its seeds (n): the ranked metric is their mean +- standard deviation, "
            f"the other columns means. `vs` is the difference of means from the reference method (PELA, else the "
            f"uncompressed model); {BETTER} / {WORSE} mark a difference beyond the noise of the seeds (Welch's "
            f"two-sided t-test, p < {ALPHA}; n >= 2 on both sides), and an unmarked difference is not a finding. "
            "Every seed shares one teacher and one data set (its teacher seed); with n = 1 nothing is tested, "
            "and a fresh machine has moved single-seed rows by up to a point at the smoke budget.", "",
            "Compression methods are ranked; a line is one when its model is smaller than the uncompressed "
            "one: fewer parameters or fewer GFLOPs, and more of neither (ToMe keeps the parameters and cuts "
            "GFLOPs, so it ranks). The uncompressed model itself and every line that keeps or grows both, or "
            "grows either (LoRA's adapters on the frozen weights), sit in a separate table below, unranked. "
            "`kept %`: the line's mean score, parameters and GFLOPs as a share of the uncompressed model's. "
            "`Pareto`: the costs against which the line is Pareto-optimal among all lines of its section "
            "(no other line scores at least as well at no higher cost, better on one of the two).", ""]
    if any(r.get("recipe") for r in rows):
        out += [f"`recipe`: which of PELA's two recipes trained the line, the official code's ({DEFAULT_RECIPE}, "
                "the default) or the paper's text; every point where they differ, with the file and line of the "
                "official code: `paper/recipes.md`.", ""]
    if any(_stale(r, current_code) for r in rows):
        out += [f"{STALE_MARK} produced by another code version than this checkout's "
                f"({code_label(current_code)}); delete the row's stage folder under `<out>/rows/` (the stage "
                "cache, not the store's `rows/`) and run the suite again to recompute it.", ""]
    for provenance in ("real", "synthetic"):
        prov_rows = [r for r in rows if r.get("provenance") == provenance]
        if not prov_rows:
            continue
        title = "Real data" if provenance == "real" else "Synthetic data (the embedded world; not comparable with real-data rows)"
        out += [f"## {title}", ""]
        groups = {key[1:]: group for key, group in _sections(prov_rows).items()}
        for (task, backbone, budget, t_seed), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            primary = group[0].get("primary_metric", "top1")
            eff = group[0].get("efficiency", {})
            scope = eff.get("scope") or ("models with task heads counted whole (backbone + neck + heads)"
                                         if any("finetune" in r for r in group) else "")  # rows stored before `scope`
            whole = f"; {scope}" if scope else ""
            size = f"; measured at {eff['input_size']} px" if eff.get("input_size") else ""
            seeds = sorted({r["seed"] for r in group})
            check = pipeline_check(group)
            out += [
                f"### {task} · {backbone} · budget {budget} · {_seed_label(seeds)} · teacher seed {t_seed}"
                + (" · pipeline check" if check else ""),
                "",
                *([f"**A pipeline check, not a ranking**: each fine-tune here is at most {check} iterations, "
                   "enough to show that the model trains, is scored and is measured end to end; the scores "
                   "rank nothing.", ""] if check else []),
                f"Ranked by {primary}. Latency: median over repeats at batch {eff.get('latency_batch', '?')}, "
                f"{eff.get('latency_threads', '?')} threads, on {group[0].get('device', '?')}; "
                f"GFLOPs = 2 x MAC, attention included{whole}{size}.",
                "",
                *_section(group, primary, current_code),
                "",
            ]
    return "\n".join(out)


# A section whose fine-tunes are shorter than this many iterations checks the pipeline and ranks nothing.
PIPELINE_CHECK_ITERATIONS = 50


def pipeline_check(rows: list[dict[str, Any]]) -> int | None:
    """The longest fine-tune (iterations) of a section whose every fine-tune is a handful of
    iterations (paper-size models at the smoke budget); None for a section that trains enough to rank."""
    lengths = []
    for r in rows:
        sched = get(r, "finetune.schedule") or {}
        if sched.get("by_epoch") is not False or not isinstance(sched.get("length"), int):
            return None
        lengths.append(sched["length"])
    return max(lengths) if lengths and max(lengths) < PIPELINE_CHECK_ITERATIONS else None


def _sections(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by leaderboard section: those ranked against each other."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r.get("provenance"), r["task"], r["backbone"], r.get("budget"), teacher_seed(r)),
                          []).append(r)
    return groups


def _line_fields(line: Line) -> dict[str, Any]:
    block = "unclassified" if line.shrinks is None else ("compression" if line.shrinks else "not_compressed")
    return {"leaderboard.block": block, "leaderboard.rank": line.rank,
            "leaderboard.score_pct_dense": line.kept.get("score"),
            "leaderboard.params_pct_dense": line.kept.get("params"),
            "leaderboard.gflops_pct_dense": line.kept.get("gflops"),
            "leaderboard.pareto_params": line.pareto.get("params"),
            "leaderboard.pareto_gflops": line.pareto.get("gflops")}


def render_csv(rows: list[dict[str, Any]]) -> str:
    """One line per stored row, flattened, with its leaderboard line's standing (`leaderboard.*`:
    block, rank among the compression methods, % of dense, Pareto flags; the same for every seed)."""
    standing: dict[int, dict[str, Any]] = {}
    for group in _sections(rows).values():
        for line in section_lines(group):
            for r in line.rows:
                standing[id(r)] = _line_fields(line)
    flat = [{**flatten(r), **standing.get(id(r), {})} for r in rows]
    columns = sorted({k for f in flat for k in f})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for f in flat:
        writer.writerow(f)
    return buf.getvalue()


def write_leaderboard(rows: list[dict[str, Any]], results_dir: str | Path) -> list[Path]:
    results_dir = Path(results_dir)
    md = atomic_write_text(results_dir / "leaderboard.md", render_markdown(rows, code_version()))
    csv_path = atomic_write_text(results_dir / "leaderboard.csv", render_csv(rows))
    # The figures (accuracy against cost per section, Pareto front marked) are `reports.figures`'.
    return [md, csv_path]
