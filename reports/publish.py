"""Everything a results folder publishes, rebuilt from its store: the leaderboard, the paper's
tables beside ours, the figures, and where PELA's two recipes differ. `tools/make_tables.py` runs it
alone; `tools/run_suite.py` runs it after every suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.tables import write_leaderboard
from reports.figures import write_figures
from reports.paper_tables import write_tables
from reports.recipes import write_recipes
from reports.starting_points import write_starting_points


def publish(rows: list[dict[str, Any]], results_dir: str | Path, latex: bool = False) -> list[Path]:
    """Write every report of `rows` under `results_dir`; returns the paths written."""
    written = list(write_leaderboard(rows, results_dir))
    written += write_tables(rows, results_dir, latex=latex)
    written += write_figures(rows, results_dir)
    written += write_recipes(results_dir)
    written += write_starting_points(rows, results_dir)
    return written
