"""Run by tests/benchmark/test_distributed.py with plain python (one process) or torchrun (two, gloo).

    suite OUT RESULTS   the tiny suite (dense, pela, pc_lora on cls; 32 training scenes, 16 validation)
    eval WEIGHTS JSON   evaluate a student's weights on the same validation split; rank 0 writes JSON
"""

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark.config import Budget, Schedule, SuiteConfig  # noqa: E402
from benchmark.runner import SuiteRunner  # noqa: E402
from common import distributed  # noqa: E402
from tasks.classification import ClassificationSchedule, ClassificationTask  # noqa: E402

TINY = Budget(
    name="tiny",
    img_size=64,
    teacher=Schedule(epochs=2, lr=1e-3, batch_size=16, warmup_epochs=0),
    pretrain=Schedule(epochs=2, lr=1e-3, batch_size=16, warmup_epochs=0),
)
ClassificationTask.schedules = {**ClassificationTask.schedules, "tiny": ClassificationSchedule(
    synthetic_train=32, synthetic_val=16, eval_batch_size=5, latency_repeats=1)}


def suite(out: str, results: str) -> None:
    cfg = SuiteConfig(seeds=(0,), methods=("dense", "pela", "pc_lora"), out=out, results=results, budget="tiny",
                      device="cpu", checkpoint_steps=1)
    SuiteRunner(cfg, budget=TINY, progress=False).run()


def evaluate(weights: str, out_json: str, data_root: str) -> None:
    from backbones import create_backbone
    from methods import create_method
    from tasks import RunContext
    from tasks.classification import eval_loader, pooled_features, DictSamples

    distributed.init("cpu")
    task = ClassificationTask()
    data = task.load(Path(data_root), task.schedule("tiny"), 64)
    teacher = create_backbone("deit_micro", num_classes=len(data.content.classes))
    student = create_method("pela").build_student(teacher)
    student.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    loader = eval_loader(DictSamples(data.content.val), 5, RunContext(torch.device("cpu"), 0, Path(out_json).parent))
    metrics = task.evaluate(student, loader)
    feats, labels = pooled_features(student, loader)
    if distributed.is_main():
        Path(out_json).write_text(json.dumps({
            "metrics": metrics, "world": distributed.world().size, "n": len(labels),
            "features": hashlib.sha256(feats.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "suite":
        suite(*sys.argv[2:4])
    else:
        evaluate(*sys.argv[2:5])
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
