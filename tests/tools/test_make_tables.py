"""tools/make_tables.py rebuilds every report from a store alone; bench_speed reads Table 1 from reports."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROWS = _load("synthetic_rows", ROOT / "tests" / "reports" / "synthetic_rows.py")


@pytest.fixture
def make_tables(monkeypatch):
    """The tool's module (it imports its sibling `_cli`)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    return _load("make_tables_under_test", ROOT / "tools" / "make_tables.py")


def _store(tmp_path):
    rows = [ROWS.make_row(m, s, seed=i) for m, scores in (("dense", (90.0, 90.0)), ("pela", (88.0, 86.0)),
                                                          ("lora", (89.0, 91.0))) for i, s in enumerate(scores)]
    return ROWS.write_store(tmp_path / "results" / "results.jsonl", rows)


def test_make_tables_writes_leaderboard_tables_and_figures_from_the_store(tmp_path):
    """As a user runs it: a fresh interpreter with the checkout on the path."""
    _store(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tables.py"), "--results",
                          str(tmp_path / "results"), "--latex"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    printed = [Path(p) for p in res.stdout.split()]
    results = tmp_path / "results"
    for expected in (results / "leaderboard.md", results / "leaderboard.csv", results / "tables" / "README.md",
                     results / "tables" / "table1_classification.md", results / "tables" / "table9_batch_scaling.csv",
                     results / "tables" / "table7_ablation.tex", results / "figures" / "README.md",
                     results / "figures" / "tradeoff_cls_deit_micro_synthetic_smoke_t0.png",
                     results / "paper" / "recipes.md"):
        assert expected in printed and expected.is_file(), expected
    table1 = (results / "tables" / "table1_classification.md").read_text()
    assert "| PELA | pela | 44.1 | 0.500 | 17 | 0.0500 | 81.0 | 87.00 ± 1.41 | -0.80 | -3.00 | 2 |" in table1
    lead = (results / "leaderboard.md").read_text()
    assert "| 1 | pela" in lead and "| - | lora" in lead


def test_a_missing_or_empty_store_is_an_error_naming_the_file(make_tables, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        make_tables.run_main(lambda: make_tables.main(["--results", str(tmp_path)]))
    assert e.value.code == 2 and f"{tmp_path / 'results.jsonl'}: no results store" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        make_tables.run_main(lambda: make_tables.main(["--results", str(tmp_path)]))
    assert e.value.code == 2 and "results.jsonl: the results store is empty" in capsys.readouterr().err


def test_a_malformed_row_is_an_error_naming_its_line(make_tables, tmp_path, capsys):
    path = _store(tmp_path)
    lines = path.read_text().splitlines()
    lines.insert(2, '{"backbone": "deit_micro", "method": "svd", "task": "cls"}')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as e:
        make_tables.run_main(lambda: make_tables.main(["--results", str(path.parent)]))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "results.jsonl: row 3 lacks seed, provenance, budget, metrics" in err
    assert not (path.parent / "leaderboard.md").exists()  # nothing half-written


def test_bench_speed_takes_table1_from_reports_unchanged(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    bench = _load("bench_speed_under_test", ROOT / "tools" / "bench_speed.py")
    # What bench_speed printed before the figures moved to reports/paper.py: `svd` is PELA's architecture.
    assert bench.PAPER == {
        ("deit_base", "dense"): (86.6, 33.7), ("deit_base", "svd"): (44.1, 17.0),
        ("deit_base", "tinybert"): (44.2, 17.3), ("deit_base", "maskalign"): (44.2, 17.3),
        ("deit_base", "tome"): (86.6, 16.5), ("swin_base", "dense"): (87.8, 30.3),
        ("swin_base", "svd"): (62.2, 21.3), ("swin_base", "tinybert"): (58.6, 20.6),
        ("swin_base", "maskalign"): (58.6, 20.6), ("deit3_large", "dense"): (304.4, 119.4),
        ("deit3_large", "svd"): (153.2, 59.8), ("deit3_large", "tinybert"): (156.8, 61.5),
        ("deit3_large", "maskalign"): (156.8, 61.5)}
