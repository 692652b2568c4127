"""The embedded default suite, end to end, as `make suite` runs it (three seeds, minutes: slow)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_embedded_default_separates_the_methods_over_three_seeds(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "run_suite.py"), "--quiet",
                        "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results")],
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    top1: dict[str, list[float]] = {}
    for row in rows:
        top1.setdefault(row["method"], []).append(row["metrics"]["top1"])
    assert {"dense", "svd", "svd_ft", "pela_no_fd", "pela_no_rwp", "pela", "lora", "pc_lora", "tinybert",
            "maskalign", "tome"} == set(top1)
    assert all(len(v) == 3 for v in top1.values()) and {r["seed"] for r in rows} == {0, 1, 2}
    mean = {m: sum(v) / len(v) for m, v in top1.items()}
    assert 85 <= mean["dense"] <= 97  # learnable, not saturated
    assert mean["svd"] < mean["dense"] - 15  # ratio-3 SVD without training costs about a quarter
    assert mean["pela"] > mean["svd"] + 10 and mean["pela"] > mean["dense"] - 4
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "| pela |" in board and " ± " in board and "seeds 0, 1, 2" in board
    cls = next(r for r in rows if r["method"] == "pela")
    assert cls["ratio"] == 3.0 and cls["efficiency"]["train_step_ms"] > 0
    assert len(cls["analysis"]["feature_similarity"]["within_class"]) == 16
