"""The issue's vision-language command at the smoke budget, for the uncompressed model and plain
SVD (slow: about eight minutes on 2 cores).

    python tools/run_suite.py --backbone albef_tiny --tasks retrieval,vqa,ve,grounding --methods dense,svd

Every task must separate them: the uncompressed model well above what the question, the sentence or a
random pick scores alone and below 100, plain SVD without pre-training below it. The margins are
under the gaps two runs of this seed measured (retrieval 7.6 R mean, VQA 33-34, SNLI-VE 8.5-9.8,
grounding 4.3-4.5 points).
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


def _random_proposal(root: Path) -> float:
    """Grounding accuracy of picking one of each expression's proposals at random."""
    test = json.loads((root / "grounding_test.json").read_text())
    return 100 * sum(1 / len(e["proposals"]) for e in test) / len(test)


def test_albef_tiny_separates_dense_from_plain_svd_on_every_vl_task(tmp_path):
    cfg = SuiteConfig(seeds=(0,), backbone="albef_tiny", tasks=("retrieval", "vqa", "ve", "grounding"), methods=("dense", "svd"),
                      out=str(tmp_path / "runs"), results=str(tmp_path / "results"), budget="smoke")
    rows = {(r["method"], r["task"]): r for r in SuiteRunner(cfg, progress=False).run()}

    def scores(task: str) -> tuple[float, float]:
        return tuple(rows[(m, task)]["metrics"][rows[(m, task)]["primary_metric"]] for m in ("dense", "svd"))

    data = tmp_path / "runs" / "data"
    chance = 100 * (1 + 5 + 10) / 3 / 200  # R@K of a random ranking of 200 test images, averaged over K
    dense, svd = scores("retrieval")
    assert 5 * chance < dense < 90 and svd < dense - 3
    dense, svd = scores("vqa")
    assert _question_only_prior(next(data.glob("synthetic-vqa-*"))) + 10 < dense < 95 and svd < dense - 10
    dense, svd = scores("ve")
    assert 100 * 2 / 3 + 5 < dense < 95 and svd < dense - 3  # 66.7 %: the sentence alone
    dense, svd = scores("grounding")
    assert _random_proposal(next(data.glob("synthetic-grounding-*"))) + 8 < dense < 90 and svd < dense - 2
    assert rows[("svd", "vqa")]["efficiency"]["params_m"] < 0.5 * rows[("dense", "vqa")]["efficiency"]["params_m"]
