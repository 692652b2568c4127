"""Table 9 at full size: training memory of a dense model and its compressed students, and the batch that fits.

    python tools/bench_dense_memory.py --backbone swin_base --task seg --size 512 --batch 16 --device cuda

For each method it builds the real dense model (random init: memory does not
depend on the weights), measures the peak of one training step (weights, AdamW's
two moments, gradients and activations; bf16 autocast on CUDA) at `--batch`, and
for every compressed method the largest batch up to `--max-batch` whose peak stays
within the dense model's. Also the median time of a training step. Rows go to
`results/bench_dense_memory.{md,csv}` with the device named; the suite's
`--scale-batch` option does the same search inside a suite run.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path

from _cli import run_main

from common.errors import PelaBenchError
from common.io import atomic_write_text


def _device_name(device) -> str:
    import platform

    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="swin_base")
    p.add_argument("--task", choices=("seg", "det"), default="seg")
    p.add_argument("--methods", default="dense,pela", help="comma-separated; 'dense' is the reference")
    p.add_argument("--ratio", type=float, default=None, help="compression ratio for the factorising methods")
    p.add_argument("--size", type=int, default=512, help="square training crop / image side (default 512)")
    p.add_argument("--batch", type=int, default=16, help="the dense model's batch (default 16, the paper's)")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch tried (default 2 x --batch)")
    p.add_argument("--repeats", type=int, default=5, help="timed training steps per method (default 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="results")
    a = p.parse_args()

    import torch

    from backbones import create_backbone
    from benchmark.efficiency import measure_train_memory
    from methods import create_method
    from tasks import create_task
    from tasks.dense import DenseSchedule
    from tasks.synthetic import dense_world, write_detection, write_segmentation

    log = logging.getLogger("pela_bench")
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if "dense" not in methods:
        raise PelaBenchError("--methods must include 'dense' (the memory reference)")
    max_batch = a.max_batch or 2 * a.batch
    task = create_task(a.task)
    sched = DenseSchedule(by_epoch=False, length=1, batch_size=a.batch, lr=1e-4, weight_decay=0.01, warmup_iters=1,
                          img_scale=(4 * a.size, a.size) if a.task == "seg" else (a.size, a.size),
                          crop_size=(a.size, a.size) if a.task == "seg" else None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        writer = write_segmentation if a.task == "seg" else write_detection
        root = writer(Path(tmp) / "data", n_train=max_batch, n_val=1, world=dense_world(a.size), progress=False)
        data = task.datasets(root)
        teacher = create_backbone(a.backbone).eval()

        def peak(method: str, batch: int) -> tuple[dict, list[float]]:
            opts = {"ratio": a.ratio} if a.ratio is not None and method != "dense" else {}
            student = create_method(method, **opts).build_student(teacher)
            student = student.to(device).train()
            for prm in student.parameters():
                prm.requires_grad_(True)
            model = task.build_model(student, data, sched).to(device)
            step = task.train_step(model, data, sched, batch)
            mem = measure_train_memory(model, step, device)
            times = []
            for _ in range(a.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t)
            n = sum(p.numel() for p in model.parameters())
            del model, student, step
            if device.type == "cuda":
                torch.cuda.empty_cache()
            mem["params_m"] = n / 1e6
            return mem, times

        ref, ref_times = peak("dense", a.batch)
        for method in methods:
            mem, times = (ref, ref_times) if method == "dense" else peak(method, a.batch)
            best, best_mem = a.batch, mem
            if method != "dense":
                for batch in range(a.batch + 1, max_batch + 1):
                    probe, _ = peak(method, batch)
                    if probe["peak_bytes"] > ref["peak_bytes"]:
                        break
                    best, best_mem = batch, probe
            row = {"backbone": a.backbone, "task": a.task, "method": method, "size": a.size,
                   "params_m": round(mem["params_m"], 2), "batch": a.batch,
                   "peak_gib": round(mem["peak_bytes"] / 2**30, 3),
                   "step_ms": round(1000 * statistics.median(times), 1),
                   "imgs_per_s": round(a.batch / statistics.median(times), 1),
                   "fitting_batch": best, "fitting_peak_gib": round(best_mem["peak_bytes"] / 2**30, 3),
                   "reference_peak_gib": round(ref["peak_bytes"] / 2**30, 3), "memory_method": mem["method"],
                   "device": _device_name(device), "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
            rows.append(row)
            log.info("%s: %.2f M params, peak %.2f GiB at batch %d, %.0f ms/step; fits batch %d within %.2f GiB",
                     method, row["params_m"], row["peak_gib"], a.batch, row["step_ms"], best,
                     row["reference_peak_gib"])
    out = Path(a.out)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "bench_dense_memory.csv", buf.getvalue())
    md = [f"# Dense training memory (Table 9): {a.backbone} {a.task} at {a.size} px on {rows[0]['device']}", "",
          "One training step: weights + AdamW moments + gradients + activations; "
          f"`python tools/bench_dense_memory.py --backbone {a.backbone} --task {a.task} --size {a.size} "
          f"--batch {a.batch}`.", "",
          "| method | params (M) | batch | peak (GiB) | step (ms) | img/s | largest batch within dense's peak | its peak (GiB) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['params_m']} | {r['batch']} | {r['peak_gib']} | {r['step_ms']} | {r['imgs_per_s']} "
           f"| {r['fitting_batch']} | {r['fitting_peak_gib']} |" for r in rows]
    atomic_write_text(out / "bench_dense_memory.md", "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
