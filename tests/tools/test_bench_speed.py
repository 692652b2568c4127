"""tools/bench_speed.py's two measurement reports, end to end on the CPU-sized backbones."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args, out):
    cmd = [sys.executable, str(ROOT / "tools" / "bench_speed.py"), *args, "--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_vs_ideal_reports_every_layer_shape_and_the_whole_model(tmp_path):
    done = _bench("--vs-ideal", "--backbones", "deit_micro", "--variant", "svd", "--variant",
                  "svd:alloc=speed,params=0.6", "--batches", "1,2", "--thread-counts", "1", "--repeats", "2",
                  out=tmp_path)
    assert done.returncode == 0, done.stderr
    models = list(csv.DictReader((tmp_path / "speed_vs_ideal.csv").open()))
    assert [(r["variant"], r["batch"]) for r in models] == [
        ("svd", "1"), ("svd:alloc=speed,params=0.6", "1"), ("svd", "2"), ("svd:alloc=speed,params=0.6", "2")]
    for r in models:  # speed-up, ideal and their ratio agree, and the ideal is a real FLOPs ratio
        assert float(r["ideal"]) > 1 and abs(float(r["speedup"]) / float(r["ideal"]) - float(r["of_ideal"])) < 1e-9
    layers = list(csv.DictReader((tmp_path / "speed_vs_ideal_layers.csv").open()))
    svd_shapes = {(r["d_in"], r["d_out"], r["rank"]) for r in layers if r["variant"] == "svd"}
    assert svd_shapes == {("48", "144", "12"), ("48", "48", "8"), ("48", "192", "12"), ("192", "48", "12")}
    qkv = next(r for r in layers if r["variant"] == "svd" and r["d_out"] == "144" and r["batch"] == "2")
    assert qkv["rows"] == "130" and qkv["count"] == "6"  # 65 tokens x batch 2, in each of the 6 blocks
    md = (tmp_path / "speed_vs_ideal.md").read_text()
    assert "## Whole model" in md and "## Layer shapes" in md and "cores" in md


def test_factorise_times_each_solver_against_the_exact_error(tmp_path):
    done = _bench("--factorise", "--backbones", "deit_micro", out=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {r["solver"]: r for r in csv.DictReader((tmp_path / "factorise_speed.csv").open())}
    assert set(rows) == {"exact", "gram", "randomized"} and rows["exact"]["matrices"] == "24"
    assert float(rows["exact"]["excess_max"]) == 0.0
    assert abs(float(rows["gram"]["excess_max"])) < 1e-3  # the same top singular vectors
    assert 0 <= float(rows["randomized"]["excess_mean"]) < 0.15


def test_bad_arguments_are_one_line_errors(tmp_path):
    done = _bench("--vs-ideal", "--factorise", out=tmp_path)
    assert done.returncode == 2 and "two reports" in done.stderr
    done = _bench("--vs-ideal", "--backbones", "deit_micro", "--batches", "0", out=tmp_path)
    assert done.returncode == 2 and "--batches '0'" in done.stderr
