"""Measure the parameter totals of the paper's dense models and write them beside the paper's.

    python tools/check_paper_params.py            # -> results/paper/dense_params.{csv,md}

Random init is enough: parameter counts do not depend on weights. Takes about a
minute on a 2-core CPU (most of it factorising DeiT-III-Large).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path

from _cli import run_main

from common.io import atomic_write_text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/paper", help="folder for dense_params.{csv,md} (default: %(default)s)")
    a = p.parse_args()
    from benchmark.paper_check import ENTRIES, measure

    log = logging.getLogger("pela_bench")
    rows = []
    for entry in ENTRIES:
        rows.append(measure(entry))
        r = rows[-1]
        log.info("Table %s %s %s %s: %.2f M (paper %s)", r["table"], r["backbone"], r["task"], r["method"],
                 r["measured_params_m"], r["paper_params_m"] if r["paper_params_m"] is not None else "-")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    out = Path(a.out)
    atomic_write_text(out / "dense_params.csv", buf.getvalue())
    md = ["# Task models: parameters measured (random init) beside the paper's", "",
          "Tables 2-3: backbone + neck + heads, auxiliary head included. Tables 4-5: ALBEF's retrieval and VQA "
          "models with their momentum copies; table '-': beyond the paper (CLIP). "
          "`python tools/check_paper_params.py`.", "",
          "| table | backbone | task | method | ratio | paper (M) | measured (M) | diff (M) | note |",
          "|---|---|---|---|---|---|---|---|---|"]
    def shown(value: float | None, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    md += [f"| {r['table']} | {r['backbone']} | {r['task']} | {r['method']} | {r['ratio']} | {shown(r['paper_params_m'])} "
           f"| {r['measured_params_m']} | {shown(r['diff_m'], '{:+.2f}')} | {r['note']} |" for r in rows]
    atomic_write_text(out / "dense_params.md", "\n".join(md) + "\n")
    log.info("wrote %s/dense_params.{csv,md}", out)
    return 0


if __name__ == "__main__":
    run_main(main)
