"""Rebuild every report from the results store, without training anything: the leaderboard
(`leaderboard.{md,csv}`), the paper's Tables 1-9 beside ours (`tables/`), and the figures
(`figures/`). Prints each path it wrote.

    python tools/make_tables.py --results results [--latex]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _cli import run_main

from reports.publish import publish
from reports.rows import load_rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="folder holding results.jsonl (default: %(default)s)")
    p.add_argument("--latex", action="store_true", help="also write each paper table as LaTeX (tables/*.tex)")
    a = p.parse_args(argv)
    rows = load_rows(Path(a.results) / "results.jsonl")  # a missing, empty or malformed store stops here
    for path in publish(rows, a.results, latex=a.latex):
        print(path)
    return 0


if __name__ == "__main__":
    run_main(main)
