"""The paper tables from synthetic rows: the paper's figure beside ours in the right line, seeds
averaged, stand-ins named, stale rows marked, and 'not run' with the command where rows are absent."""

import csv
import io

import pytest

from common.errors import PelaBenchError
from reports.paper_tables import build_tables, write_tables
from reports.render import to_csv, to_markdown
from reports.rows import load_rows, select_run


def _table(rows, number):
    return next(t for t in build_tables(rows) if t.number == number)


def _part(table, title):
    return next(p for p in table.parts if p.title == title)


def _cells(part, ours_method):
    """A printed line as {header: cell}, found by the method ours ran."""
    line = next(ln for ln in part.lines if ln[1].split()[0] == ours_method)
    return dict(zip(part.header, line))


def _seeded(row, method, scores, **kw):
    return [row(method, s, seed=i, **kw) for i, s in enumerate(scores)]


@pytest.fixture
def cls_rows(row):
    return (_seeded(row, "dense", [90.0, 90.0, 90.0]) + _seeded(row, "pela", [88.0, 87.0, 86.0])
            + _seeded(row, "tinybert", [80.0, 81.0, 82.0]) + _seeded(row, "tome", [85.0, 85.0, 85.0]))


def test_table1_puts_the_papers_figure_beside_ours_averaged_over_seeds(cls_rows):
    part = _part(_table(cls_rows, 1), "DeiT-Base")
    pela = _cells(part, "pela")
    assert pela["paper row"] == "PELA"
    assert (pela["params (M) paper"], pela["GFLOPs paper"], pela["top-1 (%) paper"]) == ("44.1", "17", "81.0")
    assert pela["top-1 (%) ours"] == "87.00 ± 1.00" and pela["n"] == "3"
    assert pela["params (M) ours"] == "0.500"  # a size is shown once, not with a spread
    assert pela["vs dense paper"] == "-0.80" and pela["vs dense ours"] == "-3.00"
    dense = _cells(part, "dense")
    assert dense["paper row"] == "DeiT-Base" and dense["top-1 (%) paper"] == "81.8"
    assert dense["top-1 (%) ours"] == "90.00 ± 0.00"
    assert _cells(part, "maskalign")["top-1 (%) ours"] == "not run"  # a paper row ours lacks
    note = part.notes[0]
    assert "`deit_micro`, standing in for DeiT-Base" in note and "not DeiT-Base" in note
    assert "synthetic data" in note and "budget smoke" in note and "seeds 0, 1, 2" in note and "CPU Test CPU" in note


def test_the_csv_holds_the_same_values_machine_readable(cls_rows):
    records = list(csv.DictReader(io.StringIO(to_csv(_table(cls_rows, 1)))))
    pela = next(r for r in records if r["paper_backbone"] == "deit_base" and r["method"] == "pela")
    assert float(pela["paper.top1"]) == 81.0 and float(pela["ours.top1.mean"]) == 87.0
    assert float(pela["ours.top1.std"]) == 1.0 and pela["ours.top1.n"] == "3"
    assert pela["ours.backbone"] == "deit_micro" and pela["ours.seeds"] == "0;1;2" and pela["stale"] == "False"
    swin = next(r for r in records if r["paper_backbone"] == "swin_base" and r["method"] == "pela")
    assert swin["ours.top1.mean"] == "" and float(swin["paper.top1"]) == 82.5


def test_the_papers_own_model_comes_before_a_stand_in(cls_rows, row):
    rows = cls_rows + [row("pela", 80.5, backbone="deit_base"), row("dense", 81.5, backbone="deit_base")]
    part = _part(_table(rows, 1), "DeiT-Base")
    assert _cells(part, "pela")["top-1 (%) ours"] == "80.50"
    assert "`deit_base` (the paper's DeiT-Base)" in part.notes[0] and "standing in" not in part.notes[0]


def test_real_data_and_the_longest_budget_win_and_the_rest_are_counted(cls_rows, row):
    rows = cls_rows + [row("pela", 70.0, provenance="real"), row("pela", 10.0, budget="tiny")]
    run = select_run(rows, "deit_base", "cls")
    assert (run.provenance, run.budget, len(run.rows), run.others) == ("real", "smoke", 1, 2)
    assert "2 other run(s)" in run.describe("DeiT-Base")


def test_a_table_without_rows_says_not_run_with_the_command(cls_rows):
    t3 = _table(cls_rows, 3)
    md = to_markdown(t3)
    assert not t3.run
    assert "not run; `python tools/run_suite.py --backbone swin_micro --tasks det`" in md
    assert "(the paper's model: `--backbone swin_base`)" in md
    part = t3.parts[0]
    pela = _cells(part, "pela")
    assert pela["AP box paper"] == "49.0" and pela["AP box ours"] == "not run"
    # The paper's Swin rows of Table 1 are there with nothing of ours beside them.
    assert "--backbone swin_micro --tasks cls" in to_markdown(_table(cls_rows, 1))


def test_rows_of_other_code_than_the_newest_are_marked(cls_rows, row):
    old = {"commit": "a" * 40, "dirty": False, "source": "s-old"}
    rows = [r for r in cls_rows if r["method"] != "tinybert"]
    rows += [row("tinybert", 80.0, code=old, timestamp="2026-01-01T00:00:00+00:00")]
    table = _table(rows, 1)
    part = _part(table, "DeiT-Base")
    assert _cells(part, "tinybert")["ours"] == "tinybert \u2020"
    assert _cells(part, "pela")["ours"] == "pela"
    assert any("\u2020 ours ran other code than the newest row" in f and "cccccccccc" in f for f in table.footnotes)


def test_table7_takes_each_column_from_its_own_task_and_backbone(row):
    rows = [row(m, s, backbone="deit_micro", task="cls") for m, s in
            (("dense", 90.0), ("svd", 50.0), ("pela_no_rwp", 85.0), ("pela_no_fd", 84.0), ("pela", 86.0))]
    rows += [row(m, s, backbone="deit_base", task="seg") for m, s in (("dense", 40.0), ("svd", 20.0))]
    part = _part(_table(rows, 7), "DeiT-Base")
    svd = _cells(part, "svd")
    assert svd["paper row"] == "low-rank" and svd["cls top-1 paper"] == "61.08" and svd["cls top-1 ours"] == "50.00"
    assert svd["seg mIoU paper"] == "24.42" and svd["seg mIoU ours"] == "20.00"
    assert _cells(part, "pela_no_rwp")["paper row"] == "+fd" and _cells(part, "pela_no_fd")["paper row"] == "+rwp"
    assert _cells(part, "pela_no_fd")["seg mIoU ours"] == "not run"
    assert any(n.startswith("Ours (cls): `deit_micro`, standing in") for n in part.notes)
    assert any(n.startswith("Ours (seg): `deit_base` (the paper's") for n in part.notes)


def test_table7_shows_the_paper_recipe_where_the_store_has_it_and_table1_the_official(row):
    rows = [row("dense", 90.0), row("svd", 50.0)]
    rows += [row(m, s, recipe="official") for m, s in (("pela", 86.0), ("pela_no_fd", 84.0))]
    rows += [row(m, s, recipe="paper") for m, s in (("pela", 87.5), ("pela_no_fd", 83.0))]
    rows += [row("pela_no_rwp", 85.0, recipe="official")]  # no paper row: the official one stands
    part = _part(_table(rows, 7), "DeiT-Base")
    pela, no_fd, no_rwp = (_cells(part, m) for m in ("pela", "pela_no_fd", "pela_no_rwp"))
    assert pela["ours"] == "pela (recipe=paper)" and pela["cls top-1 ours"] == "87.50"
    assert no_fd["cls top-1 ours"] == "83.00" and no_rwp["ours"] == "pela_no_rwp" and no_rwp["cls top-1 ours"] == "85.00"
    t7 = to_markdown(_table(rows, 7))
    assert "../paper/recipes.md" in t7 and "the paper recipe's PELA lines" in t7
    table1 = _part(_table(rows, 1), "DeiT-Base")
    assert _cells(table1, "pela")["ours"] == "pela" and _cells(table1, "pela")["top-1 (%) ours"] == "86.00"


def test_table8_reads_the_train_step_fields(row):
    def step(method, ms, mb):
        return row(method, 80.0, efficiency={"train_step_ms": ms, "train_peak_mb": mb, "train_batch": 64,
                                             "train_mem_method": "cuda_allocator"}, gpu="NVIDIA H200")

    rows = [step("dense", 640.0, 1000.0), step("svd_ft", 512.0, 900.0), step("pela", 520.0, 910.0)]
    table = _table(rows, 8)
    part = table.parts[0]
    dense, svd_ft, pela = (_cells(part, m) for m in ("dense", "svd_ft", "pela"))
    assert dense["batch paper"] == "64×4" and dense["batch ours"] == "64"
    assert dense["GPU mem (GB) paper"] == "12.77" and dense["train peak (MB) ours"] == "1000.0"
    assert dense["ms/img paper"] == "76.24" and dense["ms/img ours"] == "10.00" and dense["step (ms) ours"] == "640.00"
    assert svd_ft["paper row"] == "low-rank, pre-trained" and svd_ft["ms/img ours"] == "8.00"
    assert svd_ft["mem % dense paper"] == "88.8" and svd_ft["mem % dense ours"] == "90.0"
    assert svd_ft["ms/img % dense paper"] == "91.9" and svd_ft["ms/img % dense ours"] == "80.0"
    assert pela["paper row"] == "(PELA: ours only)" and pela["ms/img ours"] == "8.12"
    assert "GPU NVIDIA H200" in part.notes[0]
    assert any("`cuda_allocator`" in f for f in table.footnotes)
    # Rows stored before the fields existed: the table says so and how to refill them.
    old = _table([row("dense", 80.0), row("svd_ft", 79.0)], 8)
    assert _cells(old.parts[0], "dense")["ms/img ours"] == "-"
    assert any("no `train_step_*` fields" in n and "--methods dense,svd_ft,pela" in n for n in old.parts[0].notes)


def test_table9_uses_the_plus_rows(row):
    def seg(method, miou, batch, mem):
        return row(method, miou, backbone="swin_micro", task="seg", finetune={"train_batch": batch,
                                                                             "train_peak_mb": mem})

    rows = [seg("dense", 40.0, 2, 1000.0), seg("pela", 38.0, 2, 800.0), seg("pela+", 39.5, 4, 950.0)]
    part = _table(rows, 9).parts[0]
    swin = dict(zip(part.header, part.lines[1]))
    assert swin["model"] == "Swin-Base" and swin["ours"] == "swin_micro"
    assert swin["batch paper"] == "16→20" and swin["batch ours"] == "2→4"
    assert (swin["baseline paper"], swin["PELA paper"], swin["PELA+ paper"]) == ("47.68", "47.21", "47.99")
    assert (swin["baseline ours"], swin["PELA ours"], swin["PELA+ ours"]) == ("40.00", "38.00", "39.50")
    assert swin["gain paper"] == "+0.78" and swin["gain ours"] == "+1.50" and swin["PELA+ mem % dense ours"] == "95.0"
    deit = dict(zip(part.header, part.lines[0]))
    assert deit["ours"] == "not run" and deit["PELA+ ours"] == "not run"
    assert any("--backbone deit_micro --tasks seg --scale-batch" in n for n in part.notes)


def test_vl_tables_fill_as_soon_as_albef_rows_exist(row):
    rows = [row(m, s, backbone="albef_tiny", task=t) for t in ("retrieval", "vqa", "ve", "grounding")
            for m, s in (("dense", 60.0), ("pela", 55.0))]
    tables = {t.number: t for t in build_tables(rows)}
    assert all(tables[n].run for n in (4, 5, 6, 7)) and not tables[1].run
    tr = _cells(_part(tables[4], "Text retrieval (TR)"), "pela")
    assert (tr["TR@1 F30K"], tr["TR@1 COCO"], tr["TR@1 ours"]) == ("91.6", "71.6", "55.00")
    t5 = _cells(tables[5].parts[0], "pela")
    assert (t5["SNLI-VE val paper"], t5["SNLI-VE ours"], t5["VQA test-std paper"]) == ("78.55", "55.00", "73.87")
    assert _cells(tables[5].parts[0], "lora")["VQA test-std paper"] == "-"
    assert "Ours (vqa, ve): `albef_tiny`, standing in for ALBEF" in tables[5].parts[0].notes[0]
    t6 = _cells(tables[6].parts[0], "pela")
    assert (t6["val paper"], t6["testA paper"], t6["testB paper"]) == ("57.06", "65.85", "45.10")
    assert t6["grounding acc ours"] == "55.00"
    assert [ln[1] for ln in tables[6].parts[0].lines] == ["dense", "pela"]  # only the paper's rows


def test_write_tables_writes_every_table_its_index_and_latex_on_request(cls_rows, tmp_path):
    written = write_tables(cls_rows, tmp_path)
    names = {p.name for p in written}
    assert {f"table{n}" for n in range(1, 10)} == {n.split("_")[0] for n in names if n.startswith("table")}
    assert "README.md" in names and not any(n.endswith(".tex") for n in names)
    index = (tmp_path / "tables" / "README.md").read_text()
    assert "| 1: Image classification (ImageNet-1K) | run |" in index and "| 3: " in index and "not run" in index
    md = (tmp_path / "tables" / "table1_classification.md").read_text()
    assert "A difference smaller than the spread over seeds is not a finding" in md
    tex = [p for p in write_tables(cls_rows, tmp_path, latex=True) if p.suffix == ".tex"]
    assert len(tex) == 9 and r"\toprule" in tex[0].read_text() and r"$\pm$" in tex[0].read_text()


def test_load_rows_names_the_file_and_the_line(tmp_path, row, store):
    with pytest.raises(PelaBenchError, match="results.jsonl: no results store"):
        load_rows(tmp_path / "results.jsonl")
    (tmp_path / "results.jsonl").write_text("\n")
    with pytest.raises(PelaBenchError, match="results.jsonl: the results store is empty"):
        load_rows(tmp_path / "results.jsonl")
    bad = row("pela", 1.0)
    del bad["metrics"]
    store(tmp_path / "results.jsonl", [row("dense", 1.0), bad])
    with pytest.raises(PelaBenchError, match=r"results.jsonl: row 2 lacks metrics"):
        load_rows(tmp_path / "results.jsonl")
