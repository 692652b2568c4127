"""The issue's vision-language command at the smoke budget (slow: about eight minutes on 2 cores).

    python tools/run_suite.py --backbone albef_tiny --tasks retrieval,vqa

VQA must separate methods: the uncompressed model well above the question-only prior and
below 100, plain SVD without pre-training clearly below it. Retrieval must rank well above
chance; whether it separates depends on which teacher a seed draws (README), so it is not asserted.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from benchmark.config import SuiteConfig
from benchmark.runner import SuiteRunner
from tasks.vqa import vqa_accuracy

pytestmark = pytest.mark.slow


def _question_only_prior(root: Path) -> float:
    """VQA accuracy of answering each question type with its most frequent training answer."""
    def kind(q: str) -> str:
        return " ".join(q.split()[:2])  # "what colour", "what pattern", "which shape", "is the"

    train = json.loads((root / "vqa_train.json").read_text())
    test = json.loads((root / "vqa_test.json").read_text())
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in train:
        counts[kind(e["question"])].update(e["answer"])
    scores = [vqa_accuracy(counts[kind(e["question"])].most_common(1)[0][0], e["answer"]) for e in test]
    return 100 * sum(scores) / len(scores)


def test_albef_tiny_vqa_separates_dense_from_plain_svd(tmp_path):
    cfg = SuiteConfig(backbone="albef_tiny", tasks=("retrieval", "vqa"), methods=("dense", "svd"),
                      out=str(tmp_path / "runs"), results=str(tmp_path / "results"), budget="smoke")
    rows = {(r["method"], r["task"]): r for r in SuiteRunner(cfg, progress=False).run()}
    chance = 100 * (1 + 5 + 10) / 3 / 200  # R@K of a random ranking of 200 test images, averaged over K
    assert 3 * chance < rows[("dense", "retrieval")]["metrics"]["r_mean"] < 90
    prior = _question_only_prior(next((tmp_path / "runs" / "data").glob("synthetic-vqa-*")))
    dense, svd = rows[("dense", "vqa")]["metrics"]["vqa_acc"], rows[("svd", "vqa")]["metrics"]["vqa_acc"]
    assert prior + 10 < dense < 95
    assert svd < dense - 4
    assert rows[("svd", "vqa")]["efficiency"]["params_m"] < 0.5 * rows[("dense", "vqa")]["efficiency"]["params_m"]
