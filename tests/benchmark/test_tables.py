"""The leaderboard as a compression table: kept shares, Pareto marks, and the unranked block."""

import csv
import io

import pytest

from benchmark.tables import render_csv, render_markdown, section_lines
from benchmark.tradeoff import grows, pareto_optimal, shrinks


def _row(method, score, params, gflops, seed=0, **extra):
    return {"backbone": "deit_micro", "method": method, "options": "", "task": "cls", "seed": seed,
            "teacher_seed": 0, "provenance": "synthetic", "budget": "smoke", "config_hash": "h",
            "metrics": {"top1": score}, "primary_metric": "top1", "higher_is_better": True,
            "efficiency": {"params_m": params, "gflops": gflops}, **extra}


def test_pareto_on_a_hand_made_example():
    # (score, cost): b beats a at the same cost; c is cheaper and worse; d is dominated by c;
    # e ties c exactly (neither is better on one, so both stay); f is the best and the dearest.
    points = {"a": (70, 10), "b": (80, 10), "c": (60, 5), "d": (55, 6), "e": (60, 5), "f": (90, 20)}
    flags = dict(zip(points, pareto_optimal(list(points.values()))))
    assert flags == {"a": False, "b": True, "c": True, "d": False, "e": True, "f": True}
    # Lower is better: the front turns round; d (the lowest score) now leads, c and e still tie.
    low = dict(zip(points, pareto_optimal(list(points.values()), higher_is_better=False)))
    assert low == {"a": False, "b": False, "c": True, "d": True, "e": True, "f": False}


def test_what_counts_as_compression():
    assert shrinks(0.5, 0.05, 1.0, 0.1) is True  # low-rank
    assert shrinks(1.0, 0.07, 1.0, 0.1) is True  # ToMe: same parameters, fewer FLOPs
    assert shrinks(1.2, 0.12, 1.0, 0.1) is False  # LoRA grows both
    assert shrinks(1.0, 0.1, 1.0, 0.1) is False  # the uncompressed model itself
    assert shrinks(0.8, 0.11, 1.0, 0.1) is False  # trades one cost for the other
    assert shrinks(None, 0.1, 1.0, 0.1) is None
    assert grows(1.2, 1.0) and not grows(1.0, 1.0) and not grows(None, 1.0)


def _lines(md):
    """method -> cells of its table line (the rank first)."""
    out = {}
    for ln in md.splitlines():
        if ln.startswith("| ") and not ln.startswith("| rank"):
            cells = [c.strip() for c in ln.strip("|").split("|")]
            out[cells[1].split()[0]] = cells
    return out


@pytest.fixture
def rows():
    return ([_row("dense", s, 1.0, 0.10, seed=i) for i, s in enumerate((90.0, 90.0))]
            + [_row("pela", s, 0.5, 0.05, seed=i) for i, s in enumerate((88.0, 86.0))]
            + [_row("svd", s, 0.5, 0.05, seed=i) for i, s in enumerate((60.0, 62.0))]
            + [_row("tome", s, 1.0, 0.07, seed=i) for i, s in enumerate((88.5, 88.5))]
            + [_row("lora", s, 1.3, 0.12, seed=i) for i, s in enumerate((92.0, 90.0))])


def test_lora_and_dense_sit_apart_unranked_and_tome_ranks(rows):
    md = render_markdown(rows)
    section = md.split("### cls")[1]
    ranked, rest = section.split("**Not compressed**")
    assert "| 1 | tome" in ranked and "| 2 | pela" in ranked and "| 3 | svd" in ranked
    assert "lora" not in ranked and "| - | lora" in rest and "| - | dense" in rest
    assert "| pela" not in rest
    line = _lines(md)
    header = next(ln for ln in md.splitlines() if ln.startswith("| rank")).strip("|").split("|")
    col = {h.strip(): i for i, h in enumerate(header)}
    assert line["pela"][col["top-1 (%)"]] == "87.00 ± 1.41" and line["pela"][col["n"]] == "2"
    # kept shares of the uncompressed model's mean score (90), parameters (1.0) and GFLOPs (0.1)
    assert [line["pela"][col[h]] for h in ("score kept %", "params kept %", "GFLOPs kept %")] == \
        ["96.7", "50.0", "50.0"]
    assert [line["tome"][col[h]] for h in ("score kept %", "params kept %", "GFLOPs kept %")] == \
        ["98.3", "100.0", "70.0"]
    assert line["lora"][col["params kept %"]] == "130.0"
    # Pareto over every line: pela (cheapest at its score), dense and lora (the best score) are on both
    # fronts; svd (same costs as pela, lower score) on neither; tome (dense's parameters, a lower score)
    # is off the parameters front but on the GFLOPs one (between pela and dense on both axes).
    pareto = {m: line[m][col["Pareto"]] for m in line}
    assert pareto == {"pela": "params, GFLOPs", "tome": "GFLOPs", "svd": "-", "dense": "params, GFLOPs",
                      "lora": "params, GFLOPs"}


def test_the_csv_carries_each_rows_standing(rows):
    table = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert len(table) == len(rows)
    by = {(r["method"], r["seed"]): r for r in table}
    assert by[("pela", "1")]["leaderboard.block"] == "compression" and by[("pela", "1")]["leaderboard.rank"] == "2"
    assert by[("lora", "0")]["leaderboard.block"] == "not_compressed" and by[("lora", "0")]["leaderboard.rank"] == ""
    assert float(by[("tome", "0")]["leaderboard.gflops_pct_dense"]) == pytest.approx(70.0)
    assert by[("svd", "0")]["leaderboard.pareto_params"] == "False"
    assert by[("pela", "0")]["leaderboard.pareto_gflops"] == "True"


def test_without_the_uncompressed_model_every_line_ranks(rows):
    rows = [r for r in rows if r["method"] != "dense"]
    md = render_markdown(rows)
    header = next(ln for ln in md.splitlines() if ln.startswith("| rank"))
    assert "**Not compressed**" not in md and "kept %" not in header
    assert [ln.key[0] for ln in section_lines(rows)] == ["lora", "tome", "pela", "svd"]
    assert all(ln.rank is not None for ln in section_lines(rows))
