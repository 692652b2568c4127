"""Efficiency of the paper-size backbones, dense and compressed: params, FLOPs, latency, memory,
and the time it takes to build each student (the SVD factorisation).

    python tools/bench_speed.py --backbones deit_base,swin_base,deit3_large --methods dense,svd

Writes results/bench_speed.{md,csv} with the paper's Table 1 figures beside ours.
Random init: these numbers do not depend on the weights.
"""

from __future__ import annotations

import argparse
import csv
import io
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
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise PelaBenchError("--device cuda: no CUDA device is visible to torch")
    if a.threads is not None:  # the SVDs of the build as well as the timed forwards
        torch.set_num_threads(a.threads)
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


if __name__ == "__main__":
    run_main(main)
