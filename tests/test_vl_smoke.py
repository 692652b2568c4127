"""The issue's vision-language command at the smoke budget (slow: about ten minutes on 2 cores).

    python tools/run_suite.py --backbone albef_tiny --tasks retrieval

The numbers must separate methods: the uncompressed model well above chance and
below 100, plain SVD without pre-training clearly below it.
"""

from __future__ import annotations

import pytest

from benchmark.config import SuiteConfig
from benchmark.runner import SuiteRunner

pytestmark = pytest.mark.slow


def test_albef_tiny_retrieval_separates_dense_from_plain_svd(tmp_path):
    cfg = SuiteConfig(backbone="albef_tiny", tasks=("retrieval",), methods=("dense", "svd", "pela"),
                      out=str(tmp_path / "runs"), results=str(tmp_path / "results"), budget="smoke")
    rows = {r["method"]: r for r in SuiteRunner(cfg, progress=False).run()}
    dense, svd = rows["dense"]["metrics"], rows["svd"]["metrics"]
    chance = 100 * (1 + 5 + 10) / 3 / 200  # R@K of a random ranking of 200 test images, averaged over K
    assert 3 * chance < dense["r_mean"] < 90
    assert svd["r_mean"] < dense["r_mean"] - 4
    assert rows["pela"]["efficiency"]["params_m"] < 0.5 * rows["dense"]["efficiency"]["params_m"]
