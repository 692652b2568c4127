"""Figures from synthetic rows: written when their rows exist, skipped (and said so) when not."""

import pytest

from reports.figures import build_figures, ratio_figures, similarity_figures, write_figures

PNG = b"\x89PNG\r\n\x1a\n"
CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]


def _similarity(level):
    return {"classes": CLASSES, "within_class": [level + 0.02 * i for i in range(len(CLASSES))],
            "to_dense": [0.9 - level / 2 + 0.01 * i for i in range(len(CLASSES))]}


def sweep_rows(row):
    """pela and svd at three ratios over two seeds, and the uncompressed model."""
    rows = [row("dense", 90.0, seed=s) for s in (0, 1)]
    for ratio, pela, svd in ((1.5, 89.0, 80.0), (2.0, 88.0, 70.0), (4.0, 84.0, 40.0)):
        options = "" if ratio == 2.0 else f"ratio={ratio}"
        for s in (0, 1):
            rows.append(row("pela", pela + s, seed=s, options=options, ratio=ratio))
            rows.append(row("svd", svd - s, seed=s, options=options, ratio=ratio))
    # Another option beside the ratio is another setting, not a point of the sweep.
    rows.append(row("pela", 10.0, options="alpha=0.5 ratio=3.0", ratio=3.0))
    return rows


def similarity_rows(row):
    return [row(m, 80.0, seed=s, analysis={"feature_similarity": _similarity(level)})
            for m, level in (("dense", 0.3), ("svd", 0.7), ("pela", 0.4)) for s in (0, 1)]


def test_tradeoff_figure_per_backbone_and_task(row, tmp_path):
    rows = [row(m, s, seed=i) for m, scores in (("dense", (90, 91)), ("pela", (88, 87)), ("lora", (89, 90)),
                                                 ("tome", (85, 86)), ("svd", (60, 61))) for i, s in enumerate(scores)]
    rows += [row(m, s, task="seg", backbone="swin_micro") for m, s in (("dense", 40.0), ("pela", 39.0))]
    written = write_figures(rows, tmp_path)
    names = {p.name for p in written}
    assert {"tradeoff_cls_deit_micro_synthetic_smoke_t0.png", "tradeoff_seg_swin_micro_synthetic_smoke_t0.png",
            "README.md"} <= names
    assert all(p.read_bytes()[:8] == PNG for p in written if p.suffix == ".png")
    index = (tmp_path / "figures" / "README.md").read_text()
    assert "Fig. 4: accuracy against compression ratio | skipped:" in index
    assert "Fig. 2: per-class feature similarity | skipped:" in index
    assert "[tradeoff_cls_deit_micro_synthetic_smoke_t0.png]" in index


def test_fig4_is_drawn_from_rows_with_a_ratio_and_skipped_without(row, tmp_path):
    figs = ratio_figures(sweep_rows(row))
    assert [f.name for f in figs] == ["fig4_ratio_cls_deit_micro_synthetic_smoke_t0.png"]
    assert figs[0].png[:8] == PNG
    # One ratio only (the preset): nothing to sweep.
    assert ratio_figures([row("pela", 80.0, ratio=2.0), row("svd", 60.0, ratio=2.0)]) == []
    names = [f.name for f in build_figures([row("pela", 80.0), row("dense", 90.0)])]
    assert "fig4_ratio_*.png" in names  # the skipped entry
    written = write_figures(sweep_rows(row), tmp_path)
    assert (tmp_path / "figures" / "fig4_ratio_cls_deit_micro_synthetic_smoke_t0.png") in written


def test_fig2_is_drawn_from_feature_similarity_and_skipped_without(row, tmp_path):
    figs = similarity_figures(similarity_rows(row))
    assert [f.name for f in figs] == ["fig2_similarity_cls_deit_micro_synthetic_smoke_t0.png"]
    assert figs[0].png[:8] == PNG
    assert similarity_figures([row("pela", 80.0)]) == []
    # Many classes (real ImageNet): a sorted profile instead of one bar per class.
    many = {"classes": [f"c{i}" for i in range(50)], "within_class": [0.5] * 50, "to_dense": [0.8] * 50}
    assert similarity_figures([row("svd", 1.0, analysis={"feature_similarity": many})])[0].png[:8] == PNG


def test_similarity_is_averaged_over_seeds_per_class(row):
    from reports.figures import _similarity as per_class

    rows = [row("svd", 1.0, seed=0, analysis={"feature_similarity": {"classes": ["a", "b"],
                                                                     "within_class": [0.2, 0.4], "to_dense": [1, 1]}}),
            row("svd", 1.0, seed=1, analysis={"feature_similarity": {"classes": ["b", "a"],
                                                                     "within_class": [0.6, 0.4], "to_dense": [1, 1]}})]
    assert per_class(rows, "svd", "within_class") == pytest.approx({"a": 0.3, "b": 0.5})


def test_fig4_counts_a_preset_row_and_a_sweep_row_of_one_seed_once(row, monkeypatch):
    import reports.figures as figures
    from reports.figures import ratio_figures

    seen = {}
    real = figures.summarize

    def spy(values):
        seen.setdefault("calls", []).append(list(values))
        return real(values)

    monkeypatch.setattr(figures, "summarize", spy)
    rows = [row("pela", 90.0, ratio=3.0, seed=0), row("pela", 90.0, options="ratio=3.0", ratio=3.0, seed=0),
            row("pela", 80.0, options="ratio=5.0", ratio=5.0, seed=0), row("dense", 95.0)]
    assert len(ratio_figures(rows)) == 1
    assert [90.0] in seen["calls"] and [90.0, 90.0] not in seen["calls"]
