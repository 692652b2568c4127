import json
import multiprocessing
import os
import sys

import pytest

from benchmark.config import BUDGET_PRESETS, BUDGETS, SuiteConfig, config_hash, validate
from benchmark.provenance import code_label, code_version, machine, versions
from benchmark.store import ROW_KEY_FIELDS, ResultStore, row_id
from benchmark.tables import STALE_MARK, render_csv, render_markdown, write_leaderboard
from common.errors import PelaBenchError


def test_default_config_is_valid():
    validate(SuiteConfig())


@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"backbone": "vit_giant"}, "unknown backbone 'vit_giant'"),
        ({"methods": ("pela", "zip")}, "unknown method 'zip'"),
        ({"tasks": ("vqa",)}, "task 'vqa' needs a vision-language backbone"),
        ({"ratios": (0.5,)}, "--ratio"),
        ({"ratios": (2.0, 2.0)}, "--ratio lists a ratio twice"),
        ({"budget": "huge"}, "--budget"),
        ({"data": {"cls": "/nonexistent/imagenet"}}, "--data cls=/nonexistent/imagenet does not exist"),
        ({"data": {"classification": "/nonexistent/imagenet"}}, "--data cls=/nonexistent/imagenet"),  # an alias
        ({"data": {"nosuch": "/tmp"}}, "unknown task 'nosuch'"),
        ({"data": {"seg": "/tmp"}}, "task 'seg' is neither run nor the pre-training task"),
        ({"tasks": ()}, "--tasks is empty"),
        ({"methods": ()}, "--methods is empty"),
        ({"device": "tpu"}, "--device 'tpu'"),
        ({"seeds": (-1,)}, "--seeds"),
        ({"seeds": (0, 0)}, "--seeds must be distinct"),
        ({"seeds": ()}, "--seeds"),
        ({"teacher_seed": -2}, "--teacher-seed"),
        ({"checkpoint_steps": -1}, "checkpoint intervals"),
        ({"checkpoint_minutes": -0.5}, "checkpoint intervals"),
        ({"methods": ("pela",), "method_options": {"alpha": "abc"}}, "option alpha='abc': pela expects a number"),
        ({"methods": ("pela",), "method_options": {"keep_full_rank": "head*"}}, "keep_full_rank"),
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
        validate(SuiteConfig(data={"cls": str(tmp_path)}))


def test_budgets_are_tiny_smoke_paper_and_every_task_has_a_schedule_for_each():
    from tasks import create_task, list_tasks

    assert BUDGETS == ("tiny", "smoke", "paper")
    for name in list_tasks():
        for budget in BUDGETS:
            create_task(name).schedule(budget)
    with pytest.raises(PelaBenchError, match="no schedule for budget 'huge'"):
        create_task("cls").schedule("huge")
    tiny = BUDGET_PRESETS["tiny"]
    assert tiny.teacher_for(1_000) == tiny.teacher and tiny.teacher_for(50_000_000) == tiny.teacher_large
    assert BUDGET_PRESETS["paper"].pretrain_for(50_000_000) == BUDGET_PRESETS["paper"].pretrain


def test_hash_is_stable_and_sensitive():
    a = config_hash({"x": 1, "y": [1, 2]})
    assert a == config_hash({"y": [1, 2], "x": 1})
    assert a != config_hash({"x": 2, "y": [1, 2]})


def _row(method, top1, prov="synthetic", options="", seed=0, **extra):
    return {"backbone": "deit_micro", "method": method, "options": options, "task": "cls", "seed": seed,
            "teacher_seed": 0, "provenance": prov, "budget": "smoke", "config_hash": "h" + method, "metrics": {"top1": top1, "top5": 99.0},
            "primary_metric": "top1", "efficiency": _SIZES.get(method, {"params_m": 0.5, "gflops": 0.05}), **extra}


# The uncompressed model and LoRA (which grows it) sit apart from the ranked compression methods.
_SIZES = {"dense": {"params_m": 1.0, "gflops": 0.1}, "lora": {"params_m": 1.2, "gflops": 0.12}}


def test_store_replaces_rows_never_duplicates(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.put(_row("pela", 80.0))
    store.put(_row("svd", 40.0))
    store.put(_row("pela", 81.0))
    rows = store.rows()
    assert len(rows) == 2 and {r["method"]: r["metrics"]["top1"] for r in rows} == {"pela": 81.0, "svd": 40.0}
    # The same method with other options is another row (Table 7's alpha sweep), replaced in its turn.
    assert "options" in ROW_KEY_FIELDS and row_id(_row("pela", 0)) != row_id(_row("pela", 0, options="alpha=0.5"))
    store.put(_row("pela", 70.0, options="alpha=0.5"))
    store.put(_row("pela", 71.0, options="alpha=0.5"))
    by = {(r["method"], r["options"]): r["metrics"]["top1"] for r in store.rows()}
    assert by == {("pela", ""): 81.0, ("svd", ""): 40.0, ("pela", "alpha=0.5"): 71.0}
    assert len(store.rows()) == 3


def test_store_refuses_a_row_without_its_key(tmp_path):
    row = _row("pela", 1.0)
    del row["options"]
    with pytest.raises(ValueError, match="options"):
        ResultStore(tmp_path / "r.jsonl").put(row)
    assert not (tmp_path / "r.jsonl").exists()


def _put_rows(path, worker, n, barrier):
    store = ResultStore(path)
    barrier.wait()  # all writers start together
    for i in range(n):
        store.put(_row(f"m{worker}-{i}", float(i)))
        store.put(_row("shared", float(worker)))  # one key every writer replaces
        store.put(_row(f"m{worker}-{i}", float(i) + 0.5))  # and its own row, replaced at once


def test_concurrent_puts_from_several_processes_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "results.jsonl"
    ctx = multiprocessing.get_context("fork")  # the writers need nothing but the store
    workers, n = 4, 10
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_put_rows, args=(path, w, n, barrier)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    rows = ResultStore(path).rows()
    ids = [row_id(r) for r in rows]
    assert len(ids) == len(set(ids))  # no duplicate
    expected = {f"m{w}-{i}" for w in range(workers) for i in range(n)} | {"shared"}
    assert {r["method"] for r in rows} == expected  # no row lost
    assert all(r["metrics"]["top1"] == int(r["metrics"]["top1"]) + 0.5 for r in rows if r["method"] != "shared")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written file left


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
    assert all(p.is_file() for p in paths) and {p.name for p in paths} == {"leaderboard.md", "leaderboard.csv"}


def test_leaderboard_takes_each_rows_columns_and_direction():
    seg = dict(task="seg", primary_metric="mIoU", higher_is_better=True,
               columns=[["metrics.mIoU", "mIoU (%)", "{:.2f}"], ["finetune.train_batch", "train batch", "{}"]])
    rows = [_row("dense", 0, **seg, finetune={"train_batch": 2}), _row("pela", 0, **seg, finetune={"train_batch": 4})]
    rows[0]["metrics"] = {"mIoU": 30.0}
    rows[1]["metrics"] = {"mIoU": 40.0}
    md = render_markdown(rows)
    header = next(ln for ln in md.splitlines() if ln.startswith("| rank"))
    assert "mIoU (%)" in header and "train batch" in header and "top-1" not in header
    assert md.index("| 1 | pela") < md.index("| - | dense") and "| 4 |" in md
    # A metric where lower is better ranks the other way round.
    rows.append({**rows[1], "method": "svd", "metrics": {"mIoU": 35.0}})
    md = render_markdown(rows)
    assert md.index("| 1 | pela") < md.index("| 2 | svd")
    for r in rows:
        r["higher_is_better"] = False
    md = render_markdown(rows)
    assert md.index("| 1 | svd") < md.index("| 2 | pela")
    # Methods with options show them.
    assert "| options |" not in md
    rows[1]["options"] = "alpha=0.5"
    assert "alpha=0.5" in render_markdown(rows)


def test_leaderboard_marks_rows_of_another_code_version_and_notes_noise():
    current = {"commit": "a" * 40, "dirty": False}
    rows = [_row("pela", 80.0, code=current), _row("svd", 40.0, code={"commit": "b" * 40, "dirty": False}),
            _row("dense", 85.0, code={"commit": "a" * 40, "dirty": True}), _row("lora", 10.0)]
    md = render_markdown(rows, current_code=current)
    line = {m: next(ln for ln in md.splitlines() if ln.startswith("| ") and f" {m}" in ln.split("|")[2])
            for m in ("pela", "svd", "dense", "lora")}
    assert STALE_MARK not in line["pela"]
    assert f"svd {STALE_MARK}" in line["svd"] and f"dense {STALE_MARK}" in line["dense"]
    assert f"lora {STALE_MARK}" in line["lora"]  # no code recorded: not known to be this version
    assert f"{STALE_MARK} produced by another code version" in md and "aaaaaaaaaa)" in md
    assert "an unmarked difference is not a finding" in md  # the noise note
    # Without a current version (or with every row current) nothing is marked.
    assert STALE_MARK not in render_markdown(rows)
    assert STALE_MARK not in render_markdown([rows[0]], current_code=current)


def test_provenance_records_code_machine_and_versions():
    code = code_version()
    assert ("commit" in code and len(code["commit"]) == 40 and isinstance(code["dirty"], bool)) or "package" in code
    assert code_label({"commit": "0123456789abcdef", "dirty": True}) == "0123456789+dirty"
    assert code_label({"package": "1.0"}) == "v1.0" and code_label(None) == "unknown"
    m = machine()
    assert m["cpu"] and m["threads"] >= 1 and "gpu" in m
    assert {"python", "torch", "timm"} <= set(versions())


def test_rows_of_different_budgets_live_side_by_side(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.put(_row("pela", 90.0))
    store.put({**_row("pela", 10.0), "budget": "tiny"})  # a quick check must not replace the published row
    assert sorted((r["budget"], r["metrics"]["top1"]) for r in store.rows()) == [("smoke", 90.0), ("tiny", 10.0)]


def test_a_metric_column_stays_when_every_row_scores_zero():
    rows = [{**_row(m, 0.0), "task": "det", "primary_metric": "AP_box", "metrics": {"AP_box": 0.0},
             "columns": [["metrics.AP_box", "AP box", "{:.2f}"]], "ablation": {"fd": False}} for m in ("dense", "svd")]
    md = render_markdown(rows)
    assert "| AP box |" in md and "| 0.00 |" in md
    assert "L_fd" not in md  # a flag no row sets is left out


def test_rows_are_stale_by_their_source_not_by_the_commit_that_published_them():
    current = {"commit": "c" * 40, "dirty": False, "source": "s1"}
    same_source = _row("pela", 80.0, code={"commit": "a" * 40, "dirty": False, "source": "s1"})
    other_source = _row("svd", 40.0, code={"commit": "c" * 40, "dirty": True, "source": "s2"})
    md = render_markdown([same_source, other_source], current_code=current)
    assert "| 1 | pela |" in md and f"| 2 | svd {STALE_MARK} |" in md


def test_code_version_hashes_the_source_and_ignores_results(tmp_path):
    from benchmark.provenance import _SOURCE

    v = code_version()
    if "commit" not in v:
        pytest.skip("not a git checkout")
    assert len(v["source"]) == 12 and "results" not in _SOURCE and "README.md" not in _SOURCE


def test_code_that_only_formats_the_store_leaves_the_source_hash_alone(tmp_path):
    """A copy of the repository: editing the leaderboard code keeps the hash; editing a task moves it."""
    import shutil
    import subprocess

    import benchmark.provenance as provenance

    if "commit" not in code_version():
        pytest.skip("not a git checkout")
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(provenance._REPO), str(repo)], check=True)

    def source_after(edit: str) -> str:
        (repo / edit).write_text((repo / edit).read_text() + "\n# edited\n")
        out = subprocess.run([sys.executable, "-c", "from benchmark.provenance import code_version as v; "
                              "print(v()['source'])"], cwd=repo, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(repo)})
        return out.stdout.strip()

    before = source_after("README.md")
    assert source_after("benchmark/tables.py") == before and source_after("tools/make_tables.py") == before
    assert source_after("tasks/classification.py") != before
    shutil.rmtree(repo)


def _table_lines(md: str) -> dict[str, list[str]]:
    """Each method's table line, split into cells (rank first)."""
    return {cells[1].split()[0]: cells for cells in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")
             and not ln.startswith("| rank"))}


def test_leaderboard_averages_seeds_and_marks_only_differences_beyond_their_noise():
    scores = {"pela": [80.0, 81.0, 82.0], "svd": [40.0, 41.0, 39.0], "svd_ft": [81.5, 79.5, 81.0],
              "dense": [85.0, 85.0, 85.0]}
    rows = [_row(m, v, seed=s) for m, vs in scores.items() for s, v in enumerate(vs)]
    rows.append(_row("lora", 90.0, seed=0))  # one seed only: shown, never tested
    md = render_markdown(rows)
    assert "seeds 0, 1, 2 · teacher seed 0" in md and md.count("### cls") == 1  # one table, not one per seed
    line = _table_lines(md)
    header = next(ln for ln in md.splitlines() if ln.startswith("| rank"))
    assert header.endswith("| n | vs pela |")
    assert line["pela"][2] == "81.00 ± 1.00" and line["pela"][-2:] == ["3", "ref"]
    assert line["svd"][2] == "40.00 ± 1.00" and line["svd"][-1] == "-41.00\u25bc"  # far beyond the noise
    assert line["svd_ft"][-1] == "-0.33"  # within it: no mark
    assert line["dense"][2] == "85.00 ± 0.00" and line["dense"][-1] == "+4.00\u25b2"
    assert line["lora"][2] == "90.00" and line["lora"][-2:] == ["1", "+9.00"]
    ranked = [cells for cells in line.values() if cells[0] != "-"]
    assert [cells[1] for cells in sorted(ranked, key=lambda c: int(c[0]))] == ["pela", "svd_ft", "svd"]  # by mean
    assert line["dense"][0] == line["lora"][0] == "-"  # not compressed: apart, unranked
    # Lower is better: a lower mean ranks first, and "better" still means better.
    for r in rows:
        r["higher_is_better"] = False
    line = _table_lines(render_markdown(rows))
    assert line["svd"][0] == "1" and line["svd"][-1] == "-41.00\u25b2"


def test_leaderboard_without_pela_tests_against_the_uncompressed_model():
    rows = [_row(m, v, seed=s) for m, vs in {"dense": [85.0, 86.0], "svd": [40.0, 41.0]}.items()
            for s, v in enumerate(vs)]
    md = render_markdown(rows)
    assert "| n | vs dense |" in md and _table_lines(md)["dense"][-1] == "ref"


def test_rows_of_another_teacher_seed_are_other_rows_and_another_table(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    store.put(_row("pela", 80.0, seed=1))
    store.put({**_row("pela", 70.0, seed=1), "teacher_seed": 1})
    assert len(store.rows()) == 2
    old = {k: v for k, v in _row("pela", 60.0, seed=1).items() if k != "teacher_seed"}
    assert row_id(old) == row_id({**old, "teacher_seed": 1})  # a row stored before the field: its own seed
    md = render_markdown(store.rows())
    assert "seed 1 · teacher seed 0" in md and "seed 1 · teacher seed 1" in md


def test_welch_test_matches_scipy_and_handles_rows_without_spread():
    from scipy import stats as sps

    from benchmark.stats import summarize, welch_p

    a, b = [80.0, 81.0, 82.5], [79.0, 79.5, 81.0, 78.0]
    assert welch_p(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p([1.0], b) is None
    assert welch_p([2.0, 2.0], [2.0, 2.0]) == 1.0 and welch_p([2.0, 2.0], [3.0, 3.0]) == 0.0
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)


def test_a_section_of_a_few_fine_tune_iterations_is_headed_a_pipeline_check():
    def seg(method, miou, length):
        row = _row(method, miou, finetune={"schedule": {"by_epoch": False, "length": length}})
        return {**row, "task": "seg", "metrics": {"mIoU": miou}, "primary_metric": "mIoU"}

    short = render_markdown([seg("dense", 3.0, 4), seg("svd", 2.0, 4)])
    assert "· pipeline check" in short and "at most 4 iterations" in short
    long = render_markdown([seg("dense", 30.0, 300), seg("svd", 20.0, 300)])
    assert "pipeline check" not in long
    assert "pipeline check" not in render_markdown([_row("dense", 90.0)])  # no fine-tune: the cls rows
