"""Synthetic store rows, shaped as the suite writes them, for the report and tool tests."""

import json

CODE = {"commit": "c" * 40, "dirty": False, "source": "s-new"}
COLUMNS = {
    "cls": [["metrics.top1", "top-1 (%)", "{:.2f}"]],
    "seg": [["metrics.mIoU", "mIoU (%)", "{:.2f}"], ["finetune.train_batch", "train batch", "{}"]],
    "det": [["metrics.AP_box", "AP box", "{:.2f}"]],
    "retrieval": [["metrics.tr1", "TR@1", "{:.2f}"], ["metrics.r_mean", "R mean", "{:.2f}"]],
    "vqa": [["metrics.vqa_acc", "VQA acc", "{:.2f}"]],
    "ve": [["metrics.ve_acc", "VE acc", "{:.2f}"]],
    "grounding": [["metrics.grounding_acc", "grounding acc", "{:.2f}"]],
}
PRIMARY = {"cls": "top1", "seg": "mIoU", "det": "AP_box", "retrieval": "r_mean", "vqa": "vqa_acc", "ve": "ve_acc",
           "grounding": "grounding_acc"}
# params (M), GFLOPs by method: the low-rank family shares one size; LoRA grows the model.
SIZES = {"dense": (1.0, 0.10), "lora": (1.3, 0.13), "tome": (1.0, 0.07), "tinybert": (0.48, 0.045)}


def make_row(method, score, *, backbone="deit_micro", task="cls", seed=0, options="", provenance="synthetic",
             budget="smoke", code=CODE, timestamp="2026-12-01T00:00:00+00:00", gpu=None, **extra):
    params, gflops = SIZES.get(method.rstrip("+"), (0.5, 0.05))
    primary = PRIMARY[task]
    metrics = {primary: score}
    if task == "retrieval":
        metrics = {k: score for k in ("tr1", "tr5", "tr10", "ir1", "ir5", "ir10", "r_mean")}
    row = {"backbone": backbone, "method": method, "options": options, "task": task, "seed": seed,
           "teacher_seed": 0, "provenance": provenance, "budget": budget, "config_hash": f"h{method}{seed}",
           "metrics": metrics, "primary_metric": primary, "higher_is_better": True, "columns": COLUMNS[task],
           "efficiency": {"params_m": params, "gflops": gflops, "latency_ms_per_img": 2.0 * params,
                          "latency_batch": 1, "latency_threads": 2},
           "machine": {"cpu": "Test CPU", "gpu": gpu, "threads": 2}, "device": "cuda" if gpu else "cpu",
           "code": code, "timestamp": timestamp, "ratio": None if method in ("dense", "tome") else 2.0}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(row.get(k), dict):
            row[k] = {**row[k], **v}
        else:
            row[k] = v
    return row


def write_store(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
