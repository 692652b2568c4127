"""Figures from the store: accuracy against cost with its Pareto front, the paper's Fig. 4 (accuracy
against the compression ratio) and Fig. 2 (per-class feature similarity).

Every figure is a PNG under `<results>/figures/`, listed with the ones skipped (and why) in its
README. Points carry no text labels: each method has a colour and marker of its own in a legend
set below the panels, so no label can cover a point or another label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.stats import summarize
from benchmark.store import teacher_seed
from benchmark.tables import section_lines, variant_label
from benchmark.tradeoff import grows, pareto_optimal
from common.io import atomic_write_bytes, atomic_write_text
from methods.pela_recipes import DEFAULT_RECIPE
from reports.rows import get, number, options_keys

SWEEP_METHODS = ("pela", "svd", "svd_ft")
SIMILARITY_METHODS = ("dense", "svd", "pela")
_MARKERS = "osD^vP*Xh<>p"
_MAX_CLASS_BARS = 20  # more classes than this: a sorted profile per method instead of bars


@dataclass
class Figure:
    name: str  # file name under figures/
    title: str
    png: bytes | None  # None: skipped
    reason: str = ""  # why it was skipped


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by (backbone, task, provenance, budget, teacher seed): what may share one plot."""
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault((r["backbone"], r["task"], r["provenance"], r["budget"], teacher_seed(r)), []).append(r)
    return out


def _slug(key: tuple) -> str:
    backbone, task, provenance, budget, t_seed = key
    return f"{task}_{backbone}_{provenance}_{budget}_t{t_seed}"


def _seeds(rows: list[dict[str, Any]], spread: bool = True) -> str:
    seeds = sorted({r["seed"] for r in rows})
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {', '.join(map(str, seeds))} ({'mean ± std' if spread else 'mean'})"


def _style(names: list[str]) -> dict[str, tuple[Any, str]]:
    plt = _plt()
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    return {n: (cmap(i % cmap.N), _MARKERS[i % len(_MARKERS)]) for i, n in enumerate(names)}


def _legend_below(fig, handles: list, ncol: int) -> None:
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False,
               fontsize=9)


def tradeoff_figure(key: tuple, rows: list[dict[str, Any]]) -> Figure:
    """Primary metric (mean ± std over seeds) against parameters, GFLOPs and latency; the Pareto front
    of each panel ringed and joined; methods that grow the model hollow."""
    backbone, task, provenance, budget, _ = key
    name = f"tradeoff_{_slug(key)}.png"
    title = f"{task} · {backbone}: accuracy against cost ({provenance}, {budget})"
    primary = rows[0].get("primary_metric", "top1")
    higher = rows[0].get("higher_is_better", True)
    lines = [ln for ln in section_lines(rows) if ln.mean is not None]
    preset = [ln for ln in lines if not ln.key[1]]
    if len(preset) >= 2 and len(preset) < len(lines):
        # Each method at its defaults: a ratio sweep's dozen extra points have their own figure (Fig. 4).
        lines = preset
        title += "; methods at their defaults"
    if len(lines) < 2:
        return Figure(name, title, None, "fewer than two methods with a score")
    dense = next((ln for ln in lines if ln.key == ("dense", "")), None)
    labels = {ln.key: ln.key[0] + (f" ({ln.key[1]})" if ln.key[1] else "") for ln in lines}
    style = _style([labels[ln.key] for ln in lines])
    eff = rows[0].get("efficiency") or {}
    axes_spec = [("efficiency.params_m", "parameters (M)"), ("efficiency.gflops", "GFLOPs"),
                 ("efficiency.latency_ms_per_img",
                  f"latency (ms/img; batch {eff.get('latency_batch', '?')}, {eff.get('latency_threads', '?')} "
                  f"threads, {rows[0].get('device', '?')})")]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    from matplotlib.lines import Line2D

    for ax, (path, xlabel) in zip(axes, axes_spec):
        pts = []
        for ln in lines:
            cost = summarize_cost(ln.rows, path)
            if cost is not None:
                pts.append((ln, cost))
        if not pts:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(xlabel)
            continue
        front = pareto_optimal([(ln.mean, c) for ln, c in pts], higher)
        for (ln, cost), on in zip(pts, front):
            color, marker = style[labels[ln.key]]
            hollow = dense is not None and grows(ln.params, dense.params)
            std = summarize(ln.scores).std if len(ln.scores) > 1 else 0.0
            ax.errorbar(cost, ln.mean, yerr=std or None, fmt=marker, ms=7, capsize=3, color=color,
                        mfc="none" if hollow else color, mew=1.5, zorder=3)
            if on:
                ax.plot(cost, ln.mean, "o", ms=15, mfc="none", mec="black", mew=1.0, zorder=2)
        on_front = sorted((c, ln.mean) for (ln, c), on in zip(pts, front) if on)
        if len(on_front) > 1:
            ax.plot(*zip(*on_front), "--", color="black", lw=0.8, alpha=0.6, zorder=1,
                    drawstyle="steps-post" if higher else "steps-pre")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{primary} ({_seeds(rows)})")
    handles = [Line2D([], [], ls="none", marker=style[labels[ln.key]][1], color=style[labels[ln.key]][0],
                      mfc="none" if dense is not None and grows(ln.params, dense.params) else style[labels[ln.key]][0],
                      ms=7, label=labels[ln.key] + (" (grows the model)" if dense is not None
                                                    and grows(ln.params, dense.params) else ""))
               for ln in lines]
    handles.append(Line2D([], [], ls="--", marker="o", ms=12, mfc="none", mec="black", color="black", lw=0.8,
                          label="Pareto-optimal (per panel)"))
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    _legend_below(fig, handles, ncol=min(6, len(handles)))
    return Figure(name, title, _png(fig))


def summarize_cost(rows: list[dict[str, Any]], path: str) -> float | None:
    values = [v for v in (number(get(r, path)) for r in rows) if v is not None]
    return sum(values) / len(values) if values else None


def _sweepable(row: dict[str, Any]) -> bool:
    return (row["method"] in SWEEP_METHODS and number(row.get("ratio")) is not None
            and options_keys(row.get("options", "")) <= {"ratio"}
            and (row.get("recipe") or DEFAULT_RECIPE) == DEFAULT_RECIPE)


def ratio_figures(rows: list[dict[str, Any]]) -> list[Figure]:
    """The paper's Fig. 4: the primary metric after PELA and after plain SVD against the compression
    ratio, one plot per backbone and task with rows at two ratios or more."""
    out = []
    for key, group in sorted(_groups(rows).items(), key=lambda kv: str(kv[0])):
        sweep = [r for r in group if _sweepable(r)]
        by_method: dict[str, dict[float, list[float]]] = {}
        primary = group[0].get("primary_metric", "top1")
        seen: set[tuple[str, float, Any]] = set()
        for r in sweep:
            score = number(get(r, f"metrics.{primary}"))
            # The preset's row and a sweep's row at the preset's ratio are one model under one seed:
            # counted once, so a seed does not weigh twice.
            point = (r["method"], float(r["ratio"]), r.get("seed"))
            if score is not None and point not in seen:
                seen.add(point)
                by_method.setdefault(r["method"], {}).setdefault(float(r["ratio"]), []).append(score)
        if not any(len(ratios) > 1 for ratios in by_method.values()):
            continue
        backbone, task, provenance, budget, _ = key
        title = f"{task} · {backbone}: accuracy against compression ratio ({provenance}, {budget})"
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        style = _style(list(SWEEP_METHODS))
        for method in SWEEP_METHODS:
            if method not in by_method:
                continue
            ratios = sorted(by_method[method])
            stats = [summarize(by_method[method][x]) for x in ratios]
            color, marker = style[method]
            ax.errorbar(ratios, [s.mean for s in stats], yerr=[s.std for s in stats], fmt="-" + marker,
                        color=color, capsize=3, label=method + (" (plain SVD, no training)" if method == "svd"
                                                                 else ""))
        dense = [number(get(r, f"metrics.{primary}")) for r in group if r["method"] == "dense" and not r.get("options")]
        dense = [v for v in dense if v is not None]
        if dense:
            ax.axhline(summarize(dense).mean, ls=":", color="gray", label="dense (uncompressed)")
        ax.set_xlabel("compression ratio")
        ax.set_ylabel(f"{primary} ({_seeds(sweep)})")
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=11)
        fig.tight_layout()
        handles, _ = ax.get_legend_handles_labels()
        _legend_below(fig, handles, ncol=min(4, len(handles)))
        out.append(Figure(f"fig4_ratio_{_slug(key)}.png", title, _png(fig)))
    return out


def _similarity(rows: list[dict[str, Any]], method: str, field: str) -> dict[str, float]:
    """Per class, the mean over seeds of one of the method's feature-similarity lists."""
    per_class: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] != method or variant_label(r):  # the method at its defaults, its default recipe
            continue
        fs = get(r, "analysis.feature_similarity") or {}
        for cls, v in zip(fs.get("classes") or [], fs.get(field) or []):
            if number(v) is not None:
                per_class.setdefault(str(cls), []).append(float(v))
    return {c: sum(v) / len(v) for c, v in per_class.items()}


def similarity_figures(rows: list[dict[str, Any]]) -> list[Figure]:
    """The paper's Fig. 2: per class, how alike a model's own features of that class's images are
    (dense, plain SVD, PELA), and how alike they are to the dense model's features of the same image."""
    out = []
    for key, group in sorted(_groups(rows).items(), key=lambda kv: str(kv[0])):
        within = {m: _similarity(group, m, "within_class") for m in SIMILARITY_METHODS}
        to_dense = {m: _similarity(group, m, "to_dense") for m in ("svd", "pela")}
        within = {m: v for m, v in within.items() if v}
        to_dense = {m: v for m, v in to_dense.items() if v}
        if not within and not to_dense:
            continue
        backbone, task, provenance, budget, _ = key
        title = f"{task} · {backbone}: per-class feature similarity ({provenance}, {budget})"
        classes = list(dict.fromkeys(c for d in (*within.values(), *to_dense.values()) for c in d))
        seeds = _seeds([r for r in group if get(r, "analysis.feature_similarity")], spread=False)
        plt = _plt()
        bars = len(classes) <= _MAX_CLASS_BARS
        fig, axes = plt.subplots(1, 2, figsize=(max(11, 0.9 * len(classes)) if bars else 11, 4.8))
        style = _style(list(SIMILARITY_METHODS))
        panels = ((axes[0], within, "within-class cosine similarity\n(own features, pairs of one class)"),
                  (axes[1], to_dense, "cosine similarity to dense's features\n(same image)"))
        for ax, data, ylabel in panels:
            if not data:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
                continue
            if bars:
                width = 0.8 / len(data)
                for i, (method, values) in enumerate(data.items()):
                    xs = [j + (i - (len(data) - 1) / 2) * width for j in range(len(classes))]
                    ax.bar(xs, [values.get(c, float("nan")) for c in classes], width, color=style[method][0],
                           label=method)
                ax.set_xticks(range(len(classes)))
                ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
                ax.set_xlabel("class")
            else:  # too many classes to name: each method's values, sorted, as a profile
                for method, values in data.items():
                    ax.plot(sorted(values.values(), reverse=True), color=style[method][0], label=method)
                ax.set_xlabel(f"classes, sorted by similarity ({len(classes)})")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"{title}; {seeds}", fontsize=11)
        fig.tight_layout()
        handles = {}
        for ax, _, _ in panels:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        _legend_below(fig, list(handles.values()), ncol=len(handles) or 1)
        out.append(Figure(f"fig2_similarity_{_slug(key)}.png", title, _png(fig)))
    return out


def build_figures(rows: list[dict[str, Any]]) -> list[Figure]:
    """Every figure, and a skipped entry (png None) for each kind with no rows to draw."""
    figures = [tradeoff_figure(k, g) for k, g in sorted(_groups(rows).items(), key=lambda kv: str(kv[0]))]
    sweeps = ratio_figures(rows)
    figures += sweeps or [Figure("fig4_ratio_*.png", "Fig. 4: accuracy against compression ratio", None,
                                 "no rows of pela, svd or svd_ft with `ratio` set at two ratios or more (run "
                                 "`python tools/run_suite.py --ratio R --methods dense,svd,pela` for several R)")]
    similarity = similarity_figures(rows)
    figures += similarity or [Figure("fig2_similarity_*.png", "Fig. 2: per-class feature similarity", None,
                                     "no row of dense, svd or pela carries `analysis.feature_similarity` (cls rows "
                                     "of a run that records it)")]
    return figures


def write_figures(rows: list[dict[str, Any]], results_dir: str | Path) -> list[Path]:
    """PNGs under `<results>/figures/` and their README (which lists the skipped ones too)."""
    out = Path(results_dir) / "figures"
    written = []
    index = ["# Figures", "", "Written by `python tools/make_tables.py --results <dir>` from `results.jsonl`. "
             "Error bars: ± one standard deviation over seeds. Pareto-optimal: no other method scores at least as "
             "well at no higher cost and better on one of the two. Hollow markers: methods with more "
             "parameters than the uncompressed model.", "", "| figure | file |", "|---|---|"]
    for f in build_figures(rows):
        if f.png is None:
            index.append(f"| {f.title} | skipped: {f.reason} |")
            continue
        written.append(atomic_write_bytes(out / f.name, f.png))
        index.append(f"| {f.title} | [{f.name}]({f.name}) |")
    written.append(atomic_write_text(out / "README.md", "\n".join(index) + "\n"))
    return written
