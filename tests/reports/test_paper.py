"""Every number in reports/paper.py is checked against the paper's own text, line by line."""

import re
from pathlib import Path

import pytest

from reports.paper import TABLE1, TABLE2, TABLE3, TABLE4, TABLE5, TABLE6, TABLE7, TABLE8, TABLE9, TABLES

PAPER = Path("/work/shared/reference/pela-paper.txt")
if not PAPER.is_file():  # the reference sits beside the checkout on the project's machines
    PAPER = Path(__file__).resolve().parents[3] / "shared" / "reference" / "pela-paper.txt"
pytestmark = pytest.mark.skipif(not PAPER.is_file(), reason="the paper's text is not on this machine")

NUMBER = re.compile(r"(?<![\w.])(-|\d[\d,]*(?:\.\d+)?)(?![\w])")


def _block(n: int) -> list[str]:
    lines = PAPER.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"Table {n}:"))
    out = []
    for ln in lines[start + 1:]:
        if not ln.strip() or ln.startswith(("Table ", "Refer to caption")):
            break
        out.append(ln)
    return out


def _numbers(line: str) -> list[float | None]:
    line = re.sub(r"\[\d+\]", "", line)  # citations
    return [None if t == "-" else float(t.replace(",", "")) for t in NUMBER.findall(line)]


def _parse(n: int, segments: dict[str, str], methods: dict[str, str]) -> dict[tuple[str, str], list]:
    """(backbone, method) -> the numbers on its line; a line naming a segment marker opens that
    backbone, and its own row (when it has numbers) is the uncompressed model."""
    parsed, backbone = {}, None
    for line in _block(n):
        nums = _numbers(line)
        marker = next((b for m, b in segments.items() if line.startswith(m)), None)
        if marker:
            backbone = marker
            if nums:
                parsed[(backbone, "dense")] = nums
            continue
        label = next((m for p, m in methods.items() if line.startswith(p)), None)
        if label and backbone:
            parsed[(backbone, label)] = nums
    return parsed


BASELINES = {"TinyBert": "tinybert", "TinyBERT": "tinybert", "MaskAlign": "maskalign", "ToMe": "tome",
             "PELA": "pela", "LoRA": "lora"}


def _check(table, parsed, fields):
    assert set(table.rows) == set(parsed), set(table.rows) ^ set(parsed)
    for key, figures in table.rows.items():
        assert [figures[f] for f in fields] == parsed[key], key


def test_table1():
    parsed = _parse(1, {"DeiT Base": "deit_base", "Swin-Base": "swin_base", "DeiT-III-Large": "deit3_large",
                        "ViT-Base": None}, BASELINES)
    _check(TABLE1, {k: v for k, v in parsed.items() if k[0]}, ["params_m", "gflops", "top1"])


def test_table2_and_a_spot_value():
    parsed = _parse(2, {"DeiT Base": "deit_base", "Swin-Base": "swin_base", "DeiT-III-Large": "deit3_large"},
                    BASELINES)
    _check(TABLE2, parsed, ["params_m", "gflops", "mIoU"])
    assert TABLE2.get("deit_base", "pela", "mIoU") == 43.2 and TABLE2.get("deit3_large", "dense", "gflops") == 1155


def test_table3():
    parsed = _parse(3, {"Swin-Base": "swin_base"}, BASELINES)
    _check(TABLE3, parsed, ["params_m", "gflops", "AP_box"])


def test_table4_both_data_sets():
    fields = ["params_m", "tflops", "tr1", "tr5", "tr10", "ir1", "ir5", "ir10"]
    for prefix, marker in (("f30k", "Flickr30K"), ("coco", "MSCOCO")):
        parsed, inside = {}, False
        for line in _block(4):
            if line.startswith(("Flickr30K", "MSCOCO")):
                inside = line.startswith(marker)
            if not inside:
                continue
            body = line.removeprefix(marker).strip()
            if body.startswith("ALBEF"):
                parsed[("albef_base", "dense")] = _numbers(body)
            label = next((m for p, m in BASELINES.items() if body.startswith(p)), None)
            if label:
                parsed[("albef_base", label)] = _numbers(body)
        table = {k: [v[f if f in ("params_m", "tflops") else f"{prefix}_{f}"] for f in fields]
                 for k, v in TABLE4.rows.items()}
        assert table == parsed, prefix
    assert TABLE4.get("albef_base", "pela", "coco_tr1") == 71.6


def test_table5():
    parsed = _parse(5, {"ALBEF": "albef_base"}, {**BASELINES, "LoRA": "lora"})
    _check(TABLE5, parsed, ["params_m", "tflops", "ve_val", "ve_test", "vqa_test_dev", "vqa_test_std"])


def test_table6():
    parsed = _parse(6, {"ALBEF": "albef_base"}, BASELINES)
    _check(TABLE6, parsed, ["val", "testA", "testB"])


def test_table7_rows_in_the_papers_order():
    lines = [ln for ln in _block(7) if len(_numbers(ln)) == 10]
    order = ["dense", "svd", "pela_no_rwp", "pela_no_fd", "pela"]  # Baseline, low-rank, +fd, +rwp, both
    assert len(lines) == 5 and lines[1].startswith("PELA")  # the plain low-rank row, as the paper prints it
    for line, method in zip(lines, order):
        nums = _numbers(line)
        ours = ([TABLE7.get(b, method, f) for b in ("deit_base", "swin_base") for f in ("cls_top1", "seg_mIoU")]
                + [TABLE7.get("albef_base", method, f)
                   for f in ("tr1", "ir1", "ve_val", "ve_test", "vg_testA", "vg_testB")])
        assert ours == nums, method
    assert len(TABLE7.rows) == 15


def test_table8_and_table9():
    t8 = _block(8)
    assert "12.77 GB 76.24 ms/img" in t8[-2] and "11.34 GB 70.06 ms/img" in t8[-1] and "64" in t8[-2]
    assert TABLE8.get("deit_base", "dense", "gpu_mem_gb") == 12.77
    assert TABLE8.get("deit_base", "svd_ft", "latency_ms_per_img") == 70.06
    for line, backbone in zip(_block(9)[1:], ("deit_base", "swin_base")):
        base, pela, plus = (float(t) for t in re.findall(r"\d+\.\d+", line)[:3])
        assert "16\\rightarrow20" in line
        assert (TABLE9.get(backbone, "dense", "mIoU"), TABLE9.get(backbone, "pela", "mIoU"),
                TABLE9.get(backbone, "pela+", "mIoU")) == (base, pela, plus)
        assert (TABLE9.get(backbone, "pela", "train_batch"), TABLE9.get(backbone, "pela+", "train_batch")) == (16, 20)


def test_every_table_is_there_and_keyed_by_our_names():
    assert sorted(TABLES) == list(range(1, 10))
    ours = {"dense", "svd", "svd_ft", "pela", "pela_no_fd", "pela_no_rwp", "pela+", "lora", "tinybert",
            "maskalign", "tome"}
    for table in TABLES.values():
        for backbone, method in table.rows:
            assert backbone in ("deit_base", "swin_base", "deit3_large", "albef_base") and method in ours
