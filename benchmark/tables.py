"""Leaderboards from the results store: `results/leaderboard.{md,csv,png}`.

Synthetic and real-data rows go in separate sections and are never ranked together.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from common.io import atomic_write_bytes, atomic_write_text

# (row path, column header, format)
MD_COLUMNS: list[tuple[str, str, str]] = [
    ("method", "method", "{}"),
    ("ablation.fd", "L_fd", "{}"),
    ("ablation.rwp", "L_rwp", "{}"),
    ("metrics.top1", "top-1 (%)", "{:.2f}"),
    ("metrics.top5", "top-5 (%)", "{:.2f}"),
    ("metrics.mIoU", "mIoU (%)", "{:.2f}"),
    ("metrics.AP_box", "AP box", "{:.2f}"),
    ("metrics.AP_mask", "AP mask", "{:.2f}"),
    ("dense.train_batch", "train batch", "{}"),
    ("dense.train_peak_mb", "train peak mem (MB)", "{:.0f}"),
    ("efficiency.params_m", "params (M)", "{:.3f}"),
    ("efficiency.gflops", "GFLOPs", "{:.4f}"),
    ("efficiency.latency_ms_per_img", "latency (ms/img)", "{:.2f}"),
    ("efficiency.peak_mem_mb", "peak mem (MB)", "{:.1f}"),
    ("train_seconds", "train (s)", "{:.0f}"),
]


def _get(row: dict[str, Any], path: str) -> Any:
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
        if isinstance(v, dict) and k != "config":
            flat.update(flatten(v, key + "."))
        elif k != "config":
            flat[key] = v
    return flat


def _section(rows: list[dict[str, Any]], primary: str) -> list[str]:
    ranked = sorted(rows, key=lambda r: -(_get(r, f"metrics.{primary}") or float("-inf")))
    metric_cols = [c for c in MD_COLUMNS
                   if not c[0].startswith(("metrics.", "dense.")) or any(_get(r, c[0]) is not None for r in rows)]
    header = "| rank | " + " | ".join(h for _, h, _ in metric_cols) + " |"
    lines = [header, "|" + "---|" * (len(metric_cols) + 1)]
    for rank, row in enumerate(ranked, 1):
        cells = [_fmt(_get(row, path), fmt) for path, _, fmt in metric_cols]
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(rows: list[dict[str, Any]]) -> str:
    out = ["# pela-bench leaderboard", ""]
    if not rows:
        return "\n".join(out + ["No results yet.", ""])
    for provenance in ("real", "synthetic"):
        prov_rows = [r for r in rows if r.get("provenance") == provenance]
        if not prov_rows:
            continue
        title = "Real data" if provenance == "real" else "Synthetic data (the embedded world; not comparable with real-data rows)"
        out += [f"## {title}", ""]
        groups: dict[tuple, list] = {}
        for r in prov_rows:
            groups.setdefault((r["task"], r["backbone"], r.get("budget"), r["seed"]), []).append(r)
        for (task, backbone, budget, seed), group in sorted(groups.items(), key=lambda kv: str(kv[0])):
            primary = group[0].get("primary_metric", "top1")
            eff = group[0].get("efficiency", {})
            out += [
                f"### {task} · {backbone} · budget {budget} · seed {seed}",
                "",
                f"Ranked by {primary}. Latency: median over repeats at batch {eff.get('latency_batch', '?')}, "
                f"{eff.get('latency_threads', '?')} threads, on {group[0].get('device', '?')}; "
                "GFLOPs = 2 x MAC, attention included"
                + (f"; dense models counted whole (backbone + neck + heads) at {_get(group[0], 'dense.input_size')} px"
                   if _get(group[0], "dense.input_size") else "") + ".",
                "",
                *_section(group, primary),
                "",
            ]
    return "\n".join(out)


def render_csv(rows: list[dict[str, Any]]) -> str:
    flat = [flatten(r) for r in rows]
    columns = sorted({k for f in flat for k in f})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for f in flat:
        writer.writerow(f)
    return buf.getvalue()


def render_plot(rows: list[dict[str, Any]]) -> bytes | None:
    """Accuracy against parameters, one panel per task x backbone x provenance, as PNG bytes."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if _get(r, "efficiency.params_m") is not None and r.get("metrics"):
            groups.setdefault((r["task"], r["backbone"], r["provenance"]), []).append(r)
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, ((task, backbone, provenance), group) in zip(axes[0], sorted(groups.items())):
        primary = group[0].get("primary_metric", "top1")
        points: dict[tuple[float, float], list[str]] = {}
        for r in group:
            points.setdefault((r["efficiency"]["params_m"], r["metrics"][primary]), []).append(r["method"])
        y_span = max(1e-9, max(y for _, y in points) - min(y for _, y in points))
        placed: list[tuple[float, float, int]] = []
        for (x, y), names in sorted(points.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            ax.scatter(x, y, s=40)
            # stack the labels of points that sit on top of each other instead of overprinting them
            near = [k for px, py, k in placed if abs(px - x) <= 0.03 * max(px, x) and abs(py - y) < 0.04 * y_span]
            level = max(near) + 1 if near else 0
            placed.append((x, y, level))
            ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(6, 3 - 10 * level), fontsize=8)
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(primary)
        ax.set_title(f"{task} / {backbone} ({provenance})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_leaderboard(rows: list[dict[str, Any]], results_dir: str | Path) -> list[Path]:
    results_dir = Path(results_dir)
    md = atomic_write_text(results_dir / "leaderboard.md", render_markdown(rows))
    csv_path = atomic_write_text(results_dir / "leaderboard.csv", render_csv(rows))
    written = [md, csv_path]
    png = render_plot(rows)
    if png is not None:
        written.append(atomic_write_bytes(results_dir / "leaderboard.png", png))
    return written
