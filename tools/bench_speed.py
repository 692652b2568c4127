"""Efficiency of the paper-size backbones, dense and compressed: params, FLOPs, latency, memory,
and the time it takes to build each student (the SVD factorisation).

    python tools/bench_speed.py --backbones deit_base,swin_base,deit3_large --methods dense,svd

Writes results/bench_speed.{md,csv} with the paper's Table 1 figures beside ours.

    python tools/bench_speed.py --vs-ideal --backbones deit_base --variant svd --variant svd:rank_multiple=8

Writes results/speed_vs_ideal.{md,csv}: each factorised layer shape and the whole model, dense and
factorised, at batches 1/8/64 and 1/2 CPU threads (fp32 and bf16 on a GPU), as a fraction of the
FLOPs-ideal speed-up (`benchmark.speed_ideal`).

    python tools/bench_speed.py --factorise --backbones deit3_large

Writes results/factorise_speed.{md,csv}: the time to factorise every layer with each SVD solver, and
each solver's truncation error against the exact SVD's.

Random init: these numbers do not depend on the weights.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import time

import torch
from _cli import run_main

from backbones import create_backbone
from benchmark.efficiency import measure_all
from common.errors import PelaBenchError
from common.io import atomic_write_text
from methods import create_method
from reports.paper import TABLE1

# The paper's Table 1 (params M, GFLOPs), keyed by the method measured here: `svd` is PELA's
# architecture, so it takes PELA's row. How the paper counts FLOPs: reports/paper.py.
PAPER = {(backbone, "svd" if method == "pela" else method): (f["params_m"], f["gflops"])
         for (backbone, method), f in TABLE1.rows.items()}

COLUMNS = ["backbone", "method", "params_m", "paper_params_m", "gflops", "paper_gflops", "gmacs",
           "latency_ms_per_img", "latency_batch", "latency_threads", "peak_mem_mb", "build_s", "device"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="deit_base,swin_base,deit3_large")
    p.add_argument("--methods", default="dense,svd")
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for building and timing (default: torch's default, one per physical core); "
                        "on a busy machine use fewer than the free cores, oversubscribed BLAS threads run "
                        "many times slower")
    p.add_argument("--repeats", type=_positive_int, default=10, help="timed forwards per model (median reported)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", default="results")
    p.add_argument("--vs-ideal", action="store_true", help="latency against the FLOPs-ideal speed-up instead")
    p.add_argument("--variant", action="append", default=[], metavar="METHOD[:K=V,...]",
                   help="with --vs-ideal: a factorised model to compare with dense (default: svd, and svd with "
                        "ranks rounded to 8)")
    p.add_argument("--batches", default="1,8,64", help="with --vs-ideal: batch sizes (default: %(default)s)")
    p.add_argument("--thread-counts", default="1,2", help="with --vs-ideal on CPU: threads (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="with --vs-ideal: bfloat16 times each layer in bfloat16 and the whole models under "
                        "autocast (it pays on a GPU)")
    p.add_argument("--factorise", action="store_true", help="time each SVD solver on every layer instead")
    a = p.parse_args()
    if a.vs_ideal and a.factorise:
        raise PelaBenchError("--vs-ideal and --factorise are two reports: run one at a time")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise PelaBenchError("--device cuda: no CUDA device is visible to torch")
    if a.threads is not None:  # the SVDs of the build as well as the timed forwards
        torch.set_num_threads(a.threads)
    if a.vs_ideal:
        return vs_ideal(a)
    if a.factorise:
        return factorise_speed(a)
    rows = []
    for name in [b.strip() for b in a.backbones.split(",") if b.strip()]:
        torch.manual_seed(0)
        teacher = create_backbone(name).eval()
        size = teacher.info.img_size
        for method_name in [m.strip() for m in a.methods.split(",") if m.strip()]:
            method = create_method(method_name)
            try:
                method.check_backbone(teacher.info)
            except PelaBenchError as exc:
                print(f"{name:12s} {method_name:8s} skipped: {exc}", flush=True)
                continue
            start = time.perf_counter()
            model = method.build_student(teacher)
            method.on_step(model, 1.0)  # the deployed model: end of training
            model = method.finalize(model).eval()
            build_s = time.perf_counter() - start
            model = model.to(a.device)
            eff = measure_all(model, (a.batch_size, 3, size, size), latency_repeats=a.repeats,
                              threads=a.threads, device=a.device)
            paper = PAPER.get((name, method_name), (None, None))
            row = {"backbone": name, "method": method_name, **eff, "paper_params_m": paper[0],
                   "paper_gflops": paper[1], "build_s": build_s, "device": a.device}
            rows.append(row)
            print(f"{name:12s} {method_name:8s} params {eff['params_m']:8.2f} M  GFLOPs {eff['gflops']:7.2f}  "
                  f"latency {eff['latency_ms_per_img']:8.1f} ms/img  peak {eff['peak_mem_mb']:8.0f} MB  "
                  f"build {build_s:5.1f} s", flush=True)
            model.cpu()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(f"{a.out}/bench_speed.csv", buf.getvalue())

    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    lines = [
        "# Efficiency of the paper presets (random init)",
        "",
        (f"`python tools/bench_speed.py --backbones {a.backbones} --methods {a.methods} --batch-size {a.batch_size}"
         f" --repeats {a.repeats} --device {a.device}`. GFLOPs = 2 x MAC with attention; the paper's dense"
         " DeiT figures omit fused attention and its PELA figures count linear layers only. `svd` is the"
         " factorised model PELA starts from (same architecture and cost as PELA and PC-LoRA at its default"
         " ranks). Models are measured as deployed (PC-LoRA after its frozen weights are dropped, MaskAlign"
         " without its alignment module). build = time to create the student (for svd: the truncated SVD of"
         " every factorised layer)."),
        "",
        "| backbone | method | params (M) | paper | GFLOPs | paper | GMACs | latency (ms/img) | peak mem (MB) | build (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['method']} | {r['params_m']:.1f} | {f(r['paper_params_m'], '{:.1f}')} | "
            f"{r['gflops']:.1f} | {f(r['paper_gflops'], '{:.1f}')} | {r['gmacs']:.2f} | {r['latency_ms_per_img']:.1f} | "
            f"{r['peak_mem_mb']:.0f} | {r['build_s']:.1f} |"
        )
    lines.append(f"\nLatency: median of {a.repeats} runs at batch {a.batch_size}, "
                 f"{rows[0]['latency_threads'] if rows else '?'} threads, on {a.device}.\n")
    atomic_write_text(f"{a.out}/bench_speed.md", "\n".join(lines))
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PelaBenchError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise PelaBenchError(f"{flag} {text!r}: expected integers >= 1")
    return values


def _table(columns: list[tuple[str, str, str]], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in columns) + " |")
    return lines


def _write_csv(path: str, rows: list[dict]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def vs_ideal(a: argparse.Namespace) -> int:
    from benchmark.speed_ideal import layer_rows, layer_shapes, model_rows, parse_variant
    from methods.calibration import collect_calibration
    from methods.lowrank import eligible_linears

    variants = [parse_variant(v) for v in (a.variant or ["svd", "svd:rank_multiple=8"])]
    batches = _ints(a.batches, "--batches")
    threads = _ints(a.thread_counts, "--thread-counts") if a.device == "cpu" else [torch.get_num_threads()]
    dtype = getattr(torch, a.dtype)
    layers, models = [], []
    for name in [b.strip() for b in a.backbones.split(",") if b.strip()]:
        torch.manual_seed(0)
        teacher = create_backbone(name).eval()
        size = teacher.info.img_size
        # Random images: what the speed-aware allocation and the per-layer tokens need is each layer's rows
        # per image, which the weights and the pixels do not change.
        names = [n for n, _ in eligible_linears(teacher, ())]
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        calib = collect_calibration(teacher, names, [{"image": images}], lambda b: teacher(b["image"]))
        tokens = {n: s.rows_per_sample for n, s in calib.layers.items()}
        students = {}
        for v in variants:
            method = create_method(v.method, **v.options)
            start = time.perf_counter()
            student = method.build_student(teacher, calib if method.calibration_batches() else None).eval()
            build_s = time.perf_counter() - start
            students[v.label] = student.to(a.device)
            print(f"{name:12s} {v.label}: built in {build_s:.1f} s", flush=True)
            for row in layer_rows(layer_shapes(student, tokens), batches, threads, a.device, a.repeats, dtype):
                layers.append({"backbone": name, "variant": v.label, **row})
        dense = teacher.to(a.device)
        for row in model_rows(dense, students, lambda b: (b, 3, size, size), batches, threads, a.device, a.repeats,
                              progress=lambda s: print(f"{name:12s} timing {s}", flush=True),
                              autocast=dtype if dtype != torch.float32 else None):
            models.append({"backbone": name, **row})
            print(f"{name:12s} {row['variant']:28s} batch {row['batch']:3d} threads {row['threads']}: "
                  f"x{row['speedup']:.2f} of ideal x{row['ideal']:.2f} = {row['of_ideal']:.0%}", flush=True)
        del students, dense, teacher
    for r in (*layers, *models):
        r.update(device=a.device, dtype=a.dtype)
    _write_csv(f"{a.out}/speed_vs_ideal_layers.csv", layers)
    _write_csv(f"{a.out}/speed_vs_ideal.csv", models)
    cmd = " ".join(["python tools/bench_speed.py --vs-ideal", f"--backbones {a.backbones}",
                    *[f"--variant {v.label}" for v in variants], f"--batches {a.batches}",
                    f"--thread-counts {a.thread_counts}", f"--repeats {a.repeats}", f"--device {a.device}",
                    f"--dtype {a.dtype}"])
    lines = [
        "# Factorised models against their FLOPs-ideal speed-up", "",
        f"`{cmd}` on {machine_name(a.device)}. ideal = dense FLOPs / factorised FLOPs (whole model: attention's "
        "matmuls included); speed-up = dense latency / factorised latency (medians; the dense model timed before "
        "and after the students, `drift` their difference); `of ideal` = speed-up / ideal. Below 100 % the "
        "factorised model gives up part of what its FLOPs promise; above it, the dense GEMM was the slower one. "
        "Random init; latency does not depend on the weights. The per-layer table (each shape at rows = batch x "
        "tokens) is `speed_vs_ideal_layers.csv`.", "",
        "## Whole model", "",
        *_table([("backbone", "backbone", "{}"), ("variant", "variant", "`{}`"), ("batch", "batch", "{}"),
                 ("threads", "threads", "{}"), ("dense_ms", "dense (ms)", "{:.1f}"),
                 ("factorised_ms", "factorised (ms)", "{:.1f}"), ("dense_drift", "drift", "{:.0%}"),
                 ("speedup", "speed-up", "x{:.2f}"), ("ideal", "ideal", "x{:.2f}"), ("of_ideal", "of ideal", "{:.0%}")],
                models),
        "", "## Layer shapes (the slowest fraction of ideal per shape over batches and threads)", "",
    ]
    worst: dict[tuple, dict] = {}
    for r in layers:
        key = (r["backbone"], r["variant"], r["d_in"], r["d_out"], r["rank"], r["tokens"])
        if key not in worst or r["of_ideal"] < worst[key]["of_ideal"]:
            worst[key] = r
    lines += _table([("backbone", "backbone", "{}"), ("variant", "variant", "`{}`"), ("d_in", "d_in", "{}"),
                     ("d_out", "d_out", "{}"), ("rank", "rank", "{}"), ("count", "layers", "{}"),
                     ("tokens", "tokens", "{:.0f}"), ("batch", "at batch", "{}"), ("threads", "threads", "{}"),
                     ("speedup", "speed-up", "x{:.2f}"), ("ideal", "ideal", "x{:.2f}"),
                     ("of_ideal", "of ideal", "{:.0%}")], list(worst.values()))
    atomic_write_text(f"{a.out}/speed_vs_ideal.md", "\n".join(lines) + "\n")
    return 0


def factorise_speed(a: argparse.Namespace) -> int:
    import copy

    from methods.lowrank import SOLVERS, _preset, eligible_linears, factorize, lowrank_modules

    rows = []
    for name in [b.strip() for b in a.backbones.split(",") if b.strip()]:
        torch.manual_seed(0)
        teacher = create_backbone(name).eval().requires_grad_(False)
        ratio, omit = _preset(teacher, None, None)
        dense = dict(eligible_linears(teacher, omit))
        measured = {}
        # The fast solvers first, each in a process that has factorised nothing yet for its first backbone:
        # a factorisation after another one reuses the allocator's memory and runs up to a third faster.
        for solver in [*[s for s in SOLVERS if s != "exact"], "exact"]:
            model = copy.deepcopy(teacher)
            start = time.perf_counter()
            factorize(model, solver=solver)
            seconds = time.perf_counter() - start
            errors = {n: float((dense[n].weight - m.recovered_weight()).double().norm())
                      for n, m in lowrank_modules(model).items()}
            measured[solver] = (seconds, errors)
            del model
        best = measured["exact"][1]
        for solver in ("exact", *[s for s in SOLVERS if s != "exact"]):
            seconds, errors = measured[solver]
            excess = [errors[n] / best[n] - 1 for n in errors]
            rows.append({"backbone": name, "solver": solver, "matrices": len(errors), "seconds": seconds,
                         "excess_mean": sum(excess) / len(excess), "excess_max": max(excess),
                         "threads": torch.get_num_threads()})
            print(f"{name:12s} {solver:10s} {len(errors)} matrices in {seconds:5.1f} s, error vs exact "
                  f"{rows[-1]['excess_mean']:+.2%} mean, {rows[-1]['excess_max']:+.2%} max", flush=True)
    _write_csv(f"{a.out}/factorise_speed.csv", rows)
    lines = ["# Factorising a backbone: time and error by SVD solver", "",
             f"`python tools/bench_speed.py --factorise --backbones {a.backbones}` on {machine_name(a.device)}, "
             "random init at the paper preset. seconds = `methods.lowrank.factorize` alone (the student's copy "
             "of the teacher not included); error = ||W - W_r||_F per matrix against the exact SVD's (the optimum), "
             "mean and worst over the matrices. A random init has a flat spectrum, the randomised solver's worst "
             "case; on trained weights its excess is smaller (`tests/methods/test_lowrank_starts.py`).", "",
             *_table([("backbone", "backbone", "{}"), ("solver", "solver", "`{}`"), ("matrices", "matrices", "{}"),
                      ("threads", "threads", "{}"), ("seconds", "seconds", "{:.1f}"),
                      ("excess_mean", "error vs exact (mean)", "{:+.2%}"),
                      ("excess_max", "error vs exact (worst)", "{:+.2%}")], rows)]
    atomic_write_text(f"{a.out}/factorise_speed.md", "\n".join(lines) + "\n")
    return 0


def machine_name(device: str) -> str:
    import platform

    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor() or "CPU") if platform.system() == "Linux" else (platform.processor() or "CPU")
    return f"{cpu}, {os.cpu_count()} cores"


if __name__ == "__main__":
    run_main(main)
