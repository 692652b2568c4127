"""The paper's Tables 1-9 with our figures beside the paper's, built from the store's rows alone.

Each table's lines are the paper's (its methods, in its order); each of its figures gets a
"paper" column and the matching "ours" column. Ours is the mean +- std over seeds of one run
(`reports.rows.select_run`): the paper's own model where the store has it, else our stand-in,
named as such. A table with no rows of ours is still written, with the paper's figures, "not
run", and the command that would fill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmark.provenance import code_label
from common.io import atomic_write_text
from reports import paper
from reports.render import Part, Table, to_csv, to_latex, to_markdown
from benchmark.tables import variant_label
from reports.rows import Run, get, newest_source, select_run, stale, suggested_backbone, summary

STALE = "\u2020"
NOT_RUN = "not run"


# How the paper names each of our methods in its tables (dense takes the model's own name).
PAPER_LABELS = {"dense": None, "pela": "PELA", "svd": "low-rank", "svd_ft": "low-rank, pre-trained",
                "pela_no_rwp": "+fd", "pela_no_fd": "+rwp", "pela+": "PELA+", "lora": "LoRA",
                "tinybert": "TinyBERT", "maskalign": "MaskAlign", "tome": "ToMe", "pc_lora": "PC-LoRA"}
VL_TASKS = "retrieval,vqa,ve,grounding"


@dataclass(frozen=True)
class Metric:
    """One figure of a table: the paper's column(s) and ours.

    `paper`: (header, field of the paper's figures or a function of them) per paper column;
    `ours`: a dotted path into our rows or a function of a row; `task`: ours from that task's
    run (Table 5 puts SNLI-VE beside VQA); `vs_dense`: also each side's difference from the
    uncompressed model, "diff" in points or "ratio" in % (what a stand-in can be compared by)."""
    key: str
    paper: tuple[tuple[str, Any], ...]
    ours: Any
    ours_header: str
    fmt: str = "{:.2f}"
    spread: bool = True  # False: a model's size, the same under every seed
    task: str | None = None
    vs_dense: str | None = None
    paper_fmt: str = "{:g}"  # the paper's own decimals where it prints them all alike
    label: str = ""  # names the vs-dense columns where a part has several


def _metric(key: str, name: str, paper_field: Any, ours: Any, **kw: Any) -> Metric:
    return Metric(key, ((f"{name} paper", paper_field),), ours, f"{name} ours", **kw)


def _params(task: str | None = None) -> Metric:
    return _metric("params_m", "params (M)", "params_m", "efficiency.params_m", fmt="{:.3f}", spread=False,
                   task=task)


def _gflops(task: str | None = None) -> Metric:
    return _metric("gflops", "GFLOPs", "gflops", "efficiency.gflops", fmt="{:.4f}", spread=False, task=task)


def _flops_vl(task: str | None = None) -> Metric:
    return Metric("flops", (("TFLOPs paper", "tflops"),), "efficiency.gflops", "GFLOPs ours", fmt="{:.4f}",
                  spread=False, task=task)


def _paper_fmt(value: Any, fmt: str = "{:g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return fmt.format(value)


def _ours_fmt(s: Any, fmt: str, spread: bool) -> str:
    if s is None:
        return "-"
    text = fmt.format(s.mean)
    return text + (f" ± {fmt.format(s.std)}" if spread and s.n > 1 else "")


def _paper_value(figures: dict[str, Any], source: Any) -> Any:
    if not figures:
        return None
    return source(figures) if callable(source) else figures.get(source)


def _vs(value: float | None, ref: float | None, kind: str) -> float | None:
    if value is None or ref is None:
        return None
    if kind == "ratio":
        return 100.0 * value / ref if ref else None
    return value - ref


def _vs_fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if kind == "ratio" else f"{value:+.2f}"


def _command(paper_backbone: str, tasks: str, extra: str = "", ours: str | None = None) -> str:
    """The run that fills a table's part: our cheapest stand-in unless a run of `ours` is there."""
    ours = ours or suggested_backbone(paper_backbone)
    cmd = f"`python tools/run_suite.py --backbone {ours} --tasks {tasks}{extra}`"
    if ours != paper_backbone:
        cmd += f" (the paper's model: `--backbone {paper_backbone}`)"
    return cmd


def _seeds_text(rows: Sequence[dict[str, Any]]) -> str:
    return ";".join(str(s) for s in sorted({r["seed"] for r in rows}))


@dataclass
class Context:
    rows: list[dict[str, Any]]
    newest: dict[str, Any] | None
    used: list[dict[str, Any]] = field(default_factory=list)  # every row a table shows

    def run(self, paper_backbone: str, task: str) -> Run | None:
        return select_run(self.rows, paper_backbone, task)


def method_part(ctx: Context, table: paper.PaperTable, paper_backbone: str, metrics: Sequence[Metric],
                task: str, title: str | None, *, extra_methods: Sequence[str] = (), notes: bool = True,
                dense_label: str | None = None, command_extra: str = "",
                recipe: str | None = None) -> tuple[Part, list[dict[str, Any]], bool]:
    """One printed table of the paper's methods for one paper model: a line per method, a paper
    and an ours column per figure. Returns the part, its CSV records, and whether any of ours ran."""
    name = paper.PAPER_NAMES[paper_backbone]
    tasks = list(dict.fromkeys(m.task or task for m in metrics))
    runs = {t: ctx.run(paper_backbone, t) for t in tasks}
    methods = [m for (b, m) in table.rows if b == paper_backbone] + list(extra_methods)
    header = ["paper row", "ours"]
    several = sum(bool(m.vs_dense) for m in metrics) > 1
    for m in metrics:
        header += [h for h, _ in m.paper] + [m.ours_header]
        if m.vs_dense:
            unit = ("% dense" if m.vs_dense == "ratio" else "vs dense")
            unit = f"{m.label} {unit}" if several and m.label else unit
            header += [f"{unit} paper", f"{unit} ours"]
    header.append("n")

    def ours_rows(t: str, method: str) -> list[dict[str, Any]]:
        run = runs[t]
        return run.method_rows(method, recipe) if run else []

    lines, records = [], []
    for method in methods:
        figures = table.rows.get((paper_backbone, method), {})
        label = PAPER_LABELS.get(method) or dense_label or name
        if not figures:
            label = f"({label}: ours only)"
        used = [r for t in tasks for r in ours_rows(t, method)]
        ctx.used += used
        options = next((variant_label(r) for r in used if variant_label(r)), "")
        ours_name = method + (f" ({options})" if options else "") + (f" {STALE}" if stale(used, ctx.newest) else "")
        cells = [label, ours_name]
        record: dict[str, Any] = {"table": table.number, "paper_backbone": paper_backbone, "paper_row": label,
                                  "method": method, "options": options, "stale": stale(used, ctx.newest)}
        counts = set()
        for m in metrics:
            t = m.task or task
            mine = ours_rows(t, method)
            s = summary(mine, m.ours) if mine else None
            for h, field_ in m.paper:
                v = _paper_value(figures, field_)
                cells.append(_paper_fmt(v, m.paper_fmt))
                record[f"paper.{field_}" if isinstance(field_, str) else f"paper.{m.key}"] = v
            cells.append(_ours_fmt(s, m.fmt, m.spread) if mine else NOT_RUN)
            record.update({f"ours.{m.key}.mean": s.mean if s else None, f"ours.{m.key}.std": s.std if s else None,
                           f"ours.{m.key}.n": s.n if s else 0})
            if s and m.spread:
                counts.add(s.n)
            if m.vs_dense:
                p_ref = _paper_value(table.rows.get((paper_backbone, "dense"), {}), m.paper[0][1])
                p_vs = None if method == "dense" else _vs(_paper_value(figures, m.paper[0][1]), p_ref, m.vs_dense)
                dense_s = summary(ours_rows(t, "dense"), m.ours) if runs[t] else None
                o_vs = (None if method == "dense" or s is None or dense_s is None
                        else _vs(s.mean, dense_s.mean, m.vs_dense))
                cells += [_vs_fmt(p_vs, m.vs_dense), _vs_fmt(o_vs, m.vs_dense)]
                record[f"paper.{m.key}.vs_dense"] = p_vs
                record[f"ours.{m.key}.vs_dense"] = o_vs
        cells.append("/".join(str(n) for n in sorted(counts)) or ("0" if not used else "1"))
        for t in tasks:
            run = runs[t]
            prefix = f"ours.{t}." if len(tasks) > 1 else "ours."
            record.update({prefix + "backbone": run.backbone if run else None,
                           prefix + "provenance": run.provenance if run else None,
                           prefix + "budget": run.budget if run else None,
                           prefix + "seeds": _seeds_text(ours_rows(t, method)) or None,
                           prefix + "device": ", ".join(run.devices) if run else None})
        lines.append(cells)
        records.append(record)
    part_notes = []
    if notes:
        # Tasks whose runs read the same share one line (Table 5's VQA and SNLI-VE on one model).
        said: dict[str, list[str]] = {}
        for t in tasks:
            run = runs[t]
            said.setdefault(run.describe(name) + "." if run else
                            f"{NOT_RUN}; {_command(paper_backbone, t, command_extra)} writes it.", []).append(t)
        for text, ts in said.items():
            part_notes.append("Ours" + (f" ({', '.join(ts)})" if len(tasks) > 1 else "") + f": {text}")
    return Part(title, part_notes, header, lines), records, any(runs.values())


def _merge(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One CSV record per paper model and method, however many printed parts it spans."""
    merged: dict[tuple, dict[str, Any]] = {}
    for r in records:
        merged.setdefault((r["paper_backbone"], r["method"]), {}).update(r)
    return list(merged.values())


def _intro(table: paper.PaperTable) -> list[str]:
    return [f"The paper's Table {table.number}: {table.caption}. Paper figures as printed; ours from the "
            "results store.",
            "Ours: mean ± std over seeds (n per line; sizes and FLOPs are the same under every seed and "
            "shown once). A difference smaller than the spread over seeds is not a finding, and with n = 1 "
            "there is no spread to judge by. Other methods and options: `../leaderboard.md`."]


def _build(number: int, slug: str, title: str, parts: list[tuple[Part, list, bool]], ctx: Context,
           footnotes: Sequence[str] = ()) -> Table:
    table = paper.TABLES[number]
    shown = [p for p, _, _ in parts]
    notes = list(footnotes)
    if any(r.get("recipe") for r in ctx.used):
        notes.append("PELA lines (pela, pela_no_fd, pela_no_rwp): the official code's recipe unless the line names "
                     "`recipe=paper`; every point where the two differ: `../paper/recipes.md`.")
    if any(STALE in line[1] for p in shown for line in p.lines):
        notes.append(f"{STALE} ours ran other code than the newest row in this table ({code_label(ctx.newest)}); "
                     "rerun it to compare like with like.")
    return Table(number, slug, title, _intro(table), shown, _merge([r for _, rs, _ in parts for r in rs]),
                 notes, any(ran for _, _, ran in parts))


def table1(ctx: Context) -> Table:
    top1 = _metric("top1", "top-1 (%)", "top1", "metrics.top1", vs_dense="diff", paper_fmt="{:.1f}")
    parts = [method_part(ctx, paper.TABLE1, b, [_params(), _gflops(), top1], "cls", paper.PAPER_NAMES[b])
             for b in ("deit_base", "swin_base", "deit3_large")]
    return _build(1, "table1_classification", "Image classification (ImageNet-1K)", parts, ctx)


def table2(ctx: Context) -> Table:
    miou = _metric("mIoU", "mIoU (%)", "mIoU", "metrics.mIoU", vs_dense="diff", paper_fmt="{:.1f}")
    parts = [method_part(ctx, paper.TABLE2, b, [_params(), _gflops(), miou], "seg", paper.PAPER_NAMES[b])
             for b in ("deit_base", "swin_base", "deit3_large")]
    return _build(2, "table2_segmentation", "Semantic segmentation (ADE20K, UperNet)", parts, ctx)


def table3(ctx: Context) -> Table:
    ap = _metric("AP_box", "AP box", "AP_box", "metrics.AP_box", vs_dense="diff", paper_fmt="{:.1f}")
    parts = [method_part(ctx, paper.TABLE3, "swin_base", [_params(), _gflops(), ap], "det", "Swin-Base")]
    return _build(3, "table3_detection", "Object detection (COCO, Cascade Mask R-CNN)", parts, ctx)


def _recall(kind: str, k: int) -> Metric:
    key = f"{kind.lower()}{k}"
    return Metric(key, ((f"{kind}@{k} F30K", f"f30k_{key}"), (f"{kind}@{k} COCO", f"coco_{key}")),
                  f"metrics.{key}", f"{kind}@{k} ours", paper_fmt="{:.1f}")


def table4(ctx: Context) -> Table:
    common = dict(dense_label="ALBEF")
    parts = [method_part(ctx, paper.TABLE4, "albef_base", [_params(), _flops_vl()], "retrieval", "Size and cost",
                         **common),
             method_part(ctx, paper.TABLE4, "albef_base", [_recall("TR", k) for k in (1, 5, 10)], "retrieval",
                         "Text retrieval (TR)", notes=False, **common),
             method_part(ctx, paper.TABLE4, "albef_base", [_recall("IR", k) for k in (1, 5, 10)], "retrieval",
                         "Image retrieval (IR)", notes=False, **common)]
    foot = ["The paper reports Flickr30K and MSCOCO; ours is one retrieval data set (the row's `data`), "
            "shown beside both. Paper FLOPs in TFLOPs, ours in GFLOPs."]
    return _build(4, "table4_retrieval", "Image-text retrieval", parts, ctx, foot)


def table5(ctx: Context) -> Table:
    ve = Metric("ve_acc", (("SNLI-VE val paper", "ve_val"), ("SNLI-VE test paper", "ve_test")),
                "metrics.ve_acc", "SNLI-VE ours", task="ve", paper_fmt="{:.2f}")
    vqa = Metric("vqa_acc", (("VQA test-dev paper", "vqa_test_dev"), ("VQA test-std paper", "vqa_test_std")),
                 "metrics.vqa_acc", "VQA ours", task="vqa", paper_fmt="{:.2f}")
    parts = [method_part(ctx, paper.TABLE5, "albef_base", [_params("vqa"), _flops_vl("vqa"), ve, vqa], "vqa",
                         None, dense_label="ALBEF")]
    foot = ["Params and FLOPs of the VQA model, as the paper counts them; ours scores one test split per task. "
            "Paper FLOPs in TFLOPs, ours in GFLOPs."]
    return _build(5, "table5_ve_vqa", "Visual entailment (SNLI-VE) and VQA", parts, ctx, foot)


def table6(ctx: Context) -> Table:
    vg = Metric("grounding_acc", (("val paper", "val"), ("testA paper", "testA"), ("testB paper", "testB")),
                "metrics.grounding_acc", "grounding acc ours", paper_fmt="{:.2f}")
    parts = [method_part(ctx, paper.TABLE6, "albef_base", [vg], "grounding", None, dense_label="ALBEF")]
    foot = ["Ours scores one test split of referring expressions."]
    return _build(6, "table6_grounding", "Weakly supervised visual grounding (RefCOCO+)", parts, ctx, foot)


def table7(ctx: Context) -> Table:
    two = dict(paper_fmt="{:.2f}")  # Table 7 prints two decimals throughout
    vision = [_metric("cls_top1", "cls top-1", "cls_top1", "metrics.top1", task="cls", **two),
              _metric("seg_mIoU", "seg mIoU", "seg_mIoU", "metrics.mIoU", task="seg", **two)]
    albef = [_metric("tr1", "TR@1", "tr1", "metrics.tr1", task="retrieval", **two),
             _metric("ir1", "IR@1", "ir1", "metrics.ir1", task="retrieval", **two),
             Metric("ve_acc", (("VE val paper", "ve_val"), ("VE test paper", "ve_test")), "metrics.ve_acc",
                    "VE ours", task="ve", **two),
             Metric("grounding_acc", (("VG testA paper", "vg_testA"), ("VG testB paper", "vg_testB")),
                    "metrics.grounding_acc", "VG ours", task="grounding", **two)]
    # The ablation is of the two terms the text defines: the paper recipe's rows where the store has
    # them (under the official DeiT recipe the perturbation is off, so "+rwp" would train no term).
    common = dict(extra_methods=("svd_ft",), dense_label="Baseline", recipe="paper")
    parts = [method_part(ctx, paper.TABLE7, "deit_base", vision, "cls", "DeiT-Base", **common),
             method_part(ctx, paper.TABLE7, "swin_base", vision, "cls", "Swin-Base", **common),
             method_part(ctx, paper.TABLE7, "albef_base", albef, "retrieval", "ALBEF", **common)]
    foot = ["low-rank: the factorised model without training (our `svd`); +fd: feature distillation only "
            "(`pela_no_rwp`); +rwp: weight perturbation only (`pela_no_fd`); PELA: both. `svd_ft`, the "
            "factorised model pre-trained without either term, is ours only.",
            "Ours: the paper recipe's PELA lines where the store has them (named `recipe=paper`), since the "
            "ablation is of the two terms the text defines; the official DeiT scripts switch the weight "
            "perturbation off, so under the official recipe `pela_no_fd` trains no term and `pela` equals "
            "`pela_no_rwp`."]
    return _build(7, "table7_ablation", "Ablation of the two loss terms", parts, ctx, foot)


def _per_img(row: dict[str, Any]) -> float | None:
    step, batch = get(row, "efficiency.train_step_ms"), get(row, "efficiency.train_batch")
    return step / batch if isinstance(step, (int, float)) and isinstance(batch, (int, float)) and batch else None


def table8(ctx: Context) -> Table:
    metrics = [_metric("train_batch", "batch", lambda f: f"{f['batch_per_gpu']}×{f['gpus']}",
                       "efficiency.train_batch", fmt="{:.0f}", spread=False),
               Metric("train_mem", (("GPU mem (GB) paper", "gpu_mem_gb"),), "efficiency.train_peak_mb",
                      "train peak (MB) ours", fmt="{:.1f}", vs_dense="ratio", label="mem"),
               Metric("latency", (("ms/img paper", "latency_ms_per_img"),), _per_img, "ms/img ours",
                      vs_dense="ratio", label="ms/img"),
               Metric("train_step_ms", (), "efficiency.train_step_ms", "step (ms) ours")]
    part = method_part(ctx, paper.TABLE8, "deit_base", metrics, "cls", "DeiT-Base", extra_methods=("pela",),
                       command_extra=" --methods dense,svd_ft,pela")
    run = ctx.run("deit_base", "cls")
    foot = ["One optimisation step of each model on the base objective (cross-entropy) at the pre-training "
            "batch; ours ms/img = step time / batch. The paper's DeiT-Base_pela is the plain low-rank model (our "
            "`svd_ft`); PELA's student has the same architecture, so its row should read alike (a check, not a "
            "finding)."]
    if run is not None:
        mem = sorted({str(get(r, "efficiency.train_mem_method")) for r in run.rows
                      if get(r, "efficiency.train_mem_method")})
        if mem:
            foot.append("Ours' training memory measured by: " + ", ".join(f"`{m}`" for m in mem)
                        + " (`cuda_allocator`: the CUDA allocator's peak; `dispatch_tracking`: tensors alive "
                          "at once, counted on the CPU).")
        if not any(get(r, "efficiency.train_step_ms") is not None for r in run.rows):
            part[0].notes.append("These rows carry no `train_step_*` fields (stored before they existed): "
                                 + _command("deit_base", "cls", " --methods dense,svd_ft,pela", run.backbone)
                                 + " refills them.")
    return _build(8, "table8_pretrain_efficiency", "Pre-training efficiency", [part], ctx, foot)


def table9(ctx: Context) -> Table:
    header = ["model", "ours", "batch paper", "batch ours", "baseline paper", "baseline ours", "PELA paper",
              "PELA ours", "PELA+ paper", "PELA+ ours", "gain paper", "gain ours", "PELA+ mem % dense ours", "n"]
    lines, records, notes, ran = [], [], [], False
    for b in ("deit_base", "swin_base"):
        name = paper.PAPER_NAMES[b]
        run = ctx.run(b, "seg")
        fig = {m: paper.TABLE9.rows[(b, m)] for m in ("dense", "pela", "pela+")}
        rows = {m: run.method_rows(m) if run else [] for m in fig}
        s = {m: summary(rows[m], "metrics.mIoU") for m in fig}
        batch = {m: summary(rows[m], "finetune.train_batch") for m in fig}
        mem = {m: summary(rows[m], "finetune.train_peak_mb") for m in fig}
        used = [r for rs in rows.values() for r in rs]
        ctx.used += used
        gain_paper = fig["pela+"]["mIoU"] - fig["pela"]["mIoU"]
        gain = s["pela+"].mean - s["pela"].mean if s["pela+"] and s["pela"] else None
        mem_pct = 100 * mem["pela+"].mean / mem["dense"].mean if mem["pela+"] and mem["dense"] else None

        def ours(m: str) -> str:
            return _ours_fmt(s[m], "{:.2f}", True) if rows[m] else NOT_RUN

        ours_batch = (f"{batch['dense'].mean:.0f}→{batch['pela+'].mean:.0f}" if batch["dense"] and batch["pela+"]
                      else NOT_RUN if not rows["pela+"] else "-")
        mark = f" {STALE}" if stale(used, ctx.newest) else ""
        lines.append([name, (run.backbone if run else NOT_RUN) + mark,
                      f"{fig['dense']['train_batch']}→{fig['pela+']['train_batch']}", ours_batch,
                      _paper_fmt(fig["dense"]["mIoU"]), ours("dense"), _paper_fmt(fig["pela"]["mIoU"]), ours("pela"),
                      _paper_fmt(fig["pela+"]["mIoU"]), ours("pela+"), f"{gain_paper:+.2f}", _vs_fmt(gain, "diff"),
                      _vs_fmt(mem_pct, "ratio"), "/".join(str(n) for n in sorted({x.n for x in s.values() if x}))
                      or "0"])
        records.append({"table": 9, "paper_backbone": b, "method": "pela+", "stale": bool(mark),
                        "ours.backbone": run.backbone if run else None,
                        "ours.provenance": run.provenance if run else None,
                        "ours.budget": run.budget if run else None, "ours.seeds": _seeds_text(used) or None,
                        "ours.device": ", ".join(run.devices) if run else None,
                        "paper.batch_from": fig["dense"]["train_batch"], "paper.batch_to": fig["pela+"]["train_batch"],
                        "ours.batch_from": batch["dense"].mean if batch["dense"] else None,
                        "ours.batch_to": batch["pela+"].mean if batch["pela+"] else None,
                        **{f"paper.mIoU.{m}": fig[m]["mIoU"] for m in fig},
                        **{f"ours.mIoU.{m}.mean": s[m].mean if s[m] else None for m in fig},
                        **{f"ours.mIoU.{m}.std": s[m].std if s[m] else None for m in fig},
                        **{f"ours.mIoU.{m}.n": s[m].n if s[m] else 0 for m in fig},
                        "paper.gain": gain_paper, "ours.gain": gain, "ours.pela+_mem_pct_dense": mem_pct})
        extra = " --scale-batch --methods dense,pela"
        if run is None:
            notes.append(f"{name}: {NOT_RUN}; {_command(b, 'seg', extra)} writes it.")
        else:
            ran = True
            notes.append(f"{name}: {run.describe(name)}."
                         + ("" if rows["pela+"] else
                            f" No PELA+ row: {_command(b, 'seg', extra, run.backbone)} adds it."))
    foot = ["PELA+ fine-tunes at the largest batch whose training memory stays within the uncompressed "
            "model's at its batch (the paper: 16 -> 20); gain = PELA+ - PELA in mIoU points."]
    part = Part(None, notes, header, lines)
    return _build(9, "table9_batch_scaling", "Batch scaling on segmentation (PELA+)", [(part, records, ran)], ctx,
                  foot)


BUILDERS: tuple[Callable[[Context], Table], ...] = (table1, table2, table3, table4, table5, table6, table7,
                                                    table8, table9)


def build_tables(rows: list[dict[str, Any]]) -> list[Table]:
    """Tables 1-9; each marks ours against the newest row it shows."""
    tables = []
    for builder in BUILDERS:
        # A first pass finds the rows the table shows; the newest of them sets what is stale in it.
        probe = Context(rows, None)
        builder(probe)
        tables.append(builder(Context(rows, newest_source(probe.used))))
    return tables


def write_tables(rows: list[dict[str, Any]], results_dir: str | Path, latex: bool = False) -> list[Path]:
    """`<results>/tables/table{1..9}_*.{md,csv}` (and `.tex` with `latex`) and their README."""
    out = Path(results_dir) / "tables"
    written = []
    tables = build_tables(rows)
    for t in tables:
        written.append(atomic_write_text(out / f"{t.slug}.md", to_markdown(t)))
        written.append(atomic_write_text(out / f"{t.slug}.csv", to_csv(t)))
        if latex:
            written.append(atomic_write_text(out / f"{t.slug}.tex", to_latex(t)))
    written.append(atomic_write_text(out / "README.md", _index(tables)))
    return written


def _index(tables: list[Table]) -> str:
    lines = ["# The paper's tables, with ours", "",
             "Written by `python tools/make_tables.py --results <dir>` from `results.jsonl` alone. Each table "
             "puts the paper's figure beside ours; ours names the backbone it ran (a stand-in such as "
             "`deit_micro` for DeiT-Base is said to be one), its data, budget, seeds and device. Figures: "
             "`../figures/README.md`.", "", "| table | ours | files |", "|---|---|---|"]
    for t in tables:
        files = f"[md]({t.slug}.md) · [csv]({t.slug}.csv)"
        lines.append(f"| {t.number}: {t.title} | {'run' if t.run else NOT_RUN} | {files} |")
    return "\n".join(lines) + "\n"
