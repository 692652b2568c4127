"""The starting-point table: sized rows by start and allocation, against the paper's start, with noise."""

from reports.starting_points import render_starting_points, sized_rows


def _row(method, seed, score, params=None, init=None, alloc=None, params_m=0.1):
    opts = {"method": method, "ratio": None}
    opts.update({k: v for k, v in (("params", params), ("init", init), ("alloc", alloc)) if v is not None})
    return {"backbone": "deit_micro", "task": "cls", "provenance": "synthetic", "budget": "smoke",
            "teacher_seed": 0, "method": method, "seed": seed, "primary_metric": "top1",
            "metrics": {"top1": score}, "efficiency": {"params_m": params_m}, "config": {"method": opts}}


def test_cells_compare_with_plain_svd_at_one_ratio_over_seeds():
    rows = [_row("dense", s, 92.0, params_m=0.2) for s in range(3)]
    rows += [_row("svd", s, 80.0, params=0.5) for s in range(3)]  # data-free: the same under every seed
    rows += [_row("svd", s, 90.0 + 0.1 * s, params=0.5, init="whitened") for s in range(3)]
    rows += [_row("svd", s, 80.05 + 0.1 * s, params=0.5, alloc="budget") for s in range(3)]
    rows.append(_row("svd", 0, 85.0, params=0.9))
    rows.append(_row("svd", 0, 70.0))  # the preset: not sized, not in the table
    assert len(sized_rows(rows)) == 10
    md = render_starting_points(rows)
    assert "## deit_micro / cls / `svd`" in md and "teacher: top1 92.00 ± 0.00 (3)" in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| params |"))
    assert header.index("`svd` / `uniform`") < header.index("`svd` / `budget`") < header.index("`whitened`")
    half = next(ln for ln in md.splitlines() if ln.startswith("| 50% |"))
    assert "80.00 ± 0.00 (3) |" in half
    assert "90.10 ± 0.10 (3) +10.10, p<0.001" in half  # far beyond the spread: a finding
    budget_cell = half.split("|")[3]
    assert "+0.15" in budget_cell and "p<0.001" not in budget_cell  # within the noise: no finding
    assert "| 90% | 85.00 ± 0.00 (1) | - | - |" in md
    assert "| 50% | 0.500 | 0.500 | 0.500 |" in md  # measured fraction: 0.1 M of the dense 0.2 M


def test_no_sized_rows_no_table():
    assert render_starting_points([_row("svd", 0, 70.0)]) is None
