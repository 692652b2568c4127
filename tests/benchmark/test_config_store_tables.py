import json

import pytest

from benchmark.config import SuiteConfig, config_hash, validate
from benchmark.store import ResultStore, row_id
from benchmark.tables import render_csv, render_markdown, write_leaderboard
from benchmark.trainer import cosine_with_warmup
from common.errors import PelaBenchError


def test_default_config_is_valid():
    validate(SuiteConfig())


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"backbone": "vit_giant"}, "unknown backbone 'vit_giant'"),
        ({"methods": ("pela", "zip")}, "unknown method 'zip'"),
        ({"tasks": ("vqa",)}, "not implemented yet"),
        ({"ratio": 0.5}, "--ratio"),
        ({"budget": "huge"}, "--budget"),
        ({"data_root": "/nonexistent/imagenet"}, "/nonexistent/imagenet"),
        ({"teacher_weights": "/nonexistent/t.pt"}, "/nonexistent/t.pt"),
        ({"method_options": {"rwp_form": "cubic"}}, "rwp_form"),
        ({"methods": ("dense", "svd"), "method_options": {"alpha": 1.0}}, "alpha"),
    ],
)
def test_invalid_configs_fail_fast_naming_the_field(changes, needle):
    with pytest.raises(PelaBenchError) as e:
        validate(SuiteConfig().with_(**changes))
    assert needle in str(e.value)


def test_data_root_without_splits(tmp_path):
    with pytest.raises(PelaBenchError, match="no 'train' folder"):
        validate(SuiteConfig(data_root=str(tmp_path)))


def test_hash_is_stable_and_sensitive():
    a = config_hash({"x": 1, "y": [1, 2]})
    assert a == config_hash({"y": [1, 2], "x": 1})
    assert a != config_hash({"x": 2, "y": [1, 2]})


def _row(method, top1, prov="synthetic"):
    return {"backbone": "deit_micro", "method": method, "task": "cls", "seed": 0, "provenance": prov,
            "budget": "smoke", "config_hash": "h" + method, "metrics": {"top1": top1, "top5": 99.0},
            "primary_metric": "top1", "efficiency": {"params_m": 1.0, "gflops": 0.1}}


def test_store_replaces_rows_never_duplicates(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.put(_row("pela", 80.0))
    store.put(_row("svd", 40.0))
    store.put(_row("pela", 81.0))
    rows = store.rows()
    assert len(rows) == 2 and {r["method"]: r["metrics"]["top1"] for r in rows} == {"pela": 81.0, "svd": 40.0}
    assert store.find(row_id(_row("pela", 0)), "hpela")["metrics"]["top1"] == 81.0
    assert store.find(row_id(_row("pela", 0)), "other") is None


def test_store_reports_corrupt_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps(_row("pela", 1.0)) + "\n{broken\n")
    with pytest.raises(PelaBenchError, match="r.jsonl:2"):
        ResultStore(p).rows()


def test_leaderboard_ranks_and_separates_provenance(tmp_path):
    rows = [_row("svd", 40.0), _row("pela", 80.0), _row("dense", 85.0, prov="real")]
    md = render_markdown(rows)
    synthetic = md.split("## Synthetic")[1]
    assert synthetic.index("| 1 | pela") < synthetic.index("| 2 | svd")
    assert "dense" not in synthetic and "## Real data" in md
    csv_text = render_csv(rows)
    assert csv_text.splitlines()[0].count("metrics.top1") == 1 and len(csv_text.splitlines()) == 4
    paths = write_leaderboard(rows, tmp_path)
    assert all(p.is_file() for p in paths)
    assert (tmp_path / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 100, 10, 0.01) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10, 0.01) == pytest.approx(0.01)
    mids = [cosine_with_warmup(s, 100, 10, 0.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(mids, mids[1:]))
