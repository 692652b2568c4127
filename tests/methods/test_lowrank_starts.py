"""Data-aware low-rank starts (whitened, ASVD), calibration statistics and per-layer rank allocation."""

import pytest
import torch
from torch import nn

from backbones import create_backbone
from common.errors import PelaBenchError
from common.params import count_params
from methods import create_method
from methods.calibration import Calibration, collect_calibration
from methods.lowrank import LowRankLinear, eligible_linears, factorize, input_scaling, lowrank_modules
from methods.rank_alloc import (LayerPlan, budget_ranks, singular_values, speed_ranks, tail_energy,
                                uniform_for_target)


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Rows whose channels are strongly correlated and unequal in scale, as real activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[None, :]
    return torch.randn(n, d, generator=g) @ mix.T + 0.5


def stats_for(layer: nn.Linear, x: torch.Tensor) -> Calibration:
    model = nn.Sequential(layer)
    return collect_calibration(model, ["0"], [{"image": x}], lambda b: model(b["image"]))


def test_whitened_truncation_error_is_the_output_error_on_the_calibration_rows():
    torch.manual_seed(0)
    layer = nn.Linear(24, 16, bias=False)
    x = correlated_inputs(400, 24)
    cal = stats_for(layer, x)
    scaling = input_scaling("whitened", cal.get("0"), damping=0.0)
    assert scaling.method == "cholesky"
    r = 6
    spectrum = singular_values(layer.weight, scaling.forward)
    dropped = float(spectrum[r:].square().sum())
    white = LowRankLinear.from_linear(layer, r, "exact", scaling)
    with torch.no_grad():
        out_err = float((white(x) - layer(x)).square().sum()) / len(x)
        plain_err = float((LowRankLinear.from_linear(layer, r, "exact")(x) - layer(x)).square().sum()) / len(x)
    assert out_err == pytest.approx(dropped, rel=1e-3)
    assert out_err < 0.5 * plain_err  # on correlated inputs the data-aware start is far better


def test_whitening_falls_back_to_an_eigen_decomposition_when_the_moment_is_singular():
    layer = nn.Linear(8, 5, bias=False)
    x = correlated_inputs(100, 8)
    x[:, 3] = 0.0  # a dead channel: E[x x^T] is singular, and undamped it has no Cholesky factor
    cal = stats_for(layer, x)
    scaling = input_scaling("whitened", cal.get("0"), damping=0.0)
    assert scaling.method == "eigh"
    assert torch.allclose(scaling.forward @ scaling.inverse, torch.eye(8, dtype=torch.float64), atol=1e-6)
    lr = LowRankLinear.from_linear(layer, 5, "exact", scaling)  # full rank: the layer, on its inputs
    assert torch.isfinite(lr.recovered_weight()).all()
    with torch.no_grad():
        assert torch.allclose(lr(x), layer(x), atol=1e-4)
    live = [i for i in range(8) if i != 3]  # what the dead channel's weights do was never observed
    assert torch.allclose(lr.recovered_weight()[:, live], layer.weight[:, live], atol=1e-4)
    damped = input_scaling("whitened", cal.get("0"), damping=0.01)
    assert damped.method == "cholesky"


def test_asvd_scales_by_the_mean_absolute_input_and_reconstructs_at_full_rank():
    layer = nn.Linear(10, 6)
    x = correlated_inputs(200, 10)
    cal = stats_for(layer, x)
    scaling = input_scaling("asvd", cal.get("0"))
    assert scaling.method == "diagonal"
    expected = x.abs().mean(0).double() ** 0.5
    assert torch.allclose(scaling.forward.diagonal(), expected, rtol=1e-5)
    lr = LowRankLinear.from_linear(layer, 6, "exact", scaling)
    assert torch.allclose(lr.recovered_weight(), layer.weight, atol=1e-5)
    assert torch.allclose(lr.up.bias, layer.bias)


def test_calibration_records_tokens_per_sample_and_round_trips(tmp_path):
    torch.manual_seed(0)
    vit = create_backbone("deit_micro").eval()
    names = [n for n, _ in eligible_linears(vit, ())]
    batches = [{"image": torch.randn(4, 3, 64, 64)} for _ in range(2)]
    cal = collect_calibration(vit, names, batches, lambda b: vit(b["image"]))
    assert cal.samples == 8
    assert cal.get("model.blocks.0.attn.qkv").rows_per_sample == 65  # 64 patches + the class token
    assert cal.get("model.head").rows_per_sample == 1
    cal.save(tmp_path / "c.pt")
    back = Calibration.load(tmp_path / "c.pt")
    assert torch.equal(back.get("model.blocks.2.mlp.fc2").second_moment, cal.get("model.blocks.2.mlp.fc2").second_moment)
    with pytest.raises(PelaBenchError, match="no layer 'nope'"):
        back.get("nope")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PelaBenchError, match="bad.pt cannot be read"):
        Calibration.load(tmp_path / "bad.pt")


def test_budget_ranks_spend_the_budget_on_the_layers_whose_spectrum_needs_it():
    plans = [LayerPlan("flat", 64, 64), LayerPlan("steep", 64, 64), LayerPlan("tiny", 16, 16)]
    spectra = {"flat": torch.ones(64), "steep": torch.logspace(0, -4, 64), "tiny": torch.ones(16)}
    fixed = 1000
    ranks = budget_ranks(plans, spectra, target=0.5, unit="params", fixed=fixed, multiple=8)
    assert ranks["tiny"] is None  # 16 x 16 at rank 8 costs as much as dense: it stays dense
    assert ranks["flat"] % 8 == 0 and ranks["steep"] % 8 == 0
    assert ranks["flat"] > ranks["steep"]
    cost = sum(p.cost(ranks[p.name], "params") for p in plans)
    assert fixed + cost <= 0.5 * (fixed + sum(p.dense for p in plans))
    assert all(r is None or p.factorised(r) < p.dense for p, r in zip(plans, ranks.values()))
    with pytest.raises(PelaBenchError, match="cannot be met"):
        budget_ranks(plans, spectra, target=0.05, unit="params", fixed=fixed, multiple=8)


def test_a_flops_budget_weighs_each_layer_by_its_tokens():
    plans = [LayerPlan("many", 64, 64, tokens=100.0), LayerPlan("few", 64, 64, tokens=1.0)]
    spectra = {n: torch.ones(64) for n in ("many", "few")}
    ranks = budget_ranks(plans, spectra, target=0.5, unit="flops", fixed=0, multiple=8)
    assert ranks["few"] is None or ranks["few"] > ranks["many"]  # cutting the busy layer saves the FLOPs


def test_uniform_for_target_finds_the_smallest_ratio_that_meets_it():
    plans = [LayerPlan("a", 48, 144), LayerPlan("b", 48, 192), LayerPlan("c", 192, 48)]
    ranks, ratio = uniform_for_target(plans, 0.5, "params", fixed=500)
    total = 500 + sum(p.cost(ranks[p.name], "params") for p in plans)
    assert total <= 0.5 * (500 + sum(p.dense for p in plans))
    looser, _ = uniform_for_target(plans, 0.6, "params", fixed=500)
    assert all(looser[n] >= ranks[n] for n in ranks) and looser != ranks


def test_speed_aware_keeps_the_slow_shapes_dense_and_spends_the_budget_elsewhere():
    plans = [LayerPlan("slow", 64, 64), LayerPlan("fast", 64, 256)]
    spectra = {"slow": torch.logspace(0, -4, 64), "fast": torch.ones(64)}  # the budget alone cuts "slow" most

    def timer(d_in, d_out, rank, rows):  # a 64 x 64 layer runs slower factorised; the other faster
        return {None: 1.0}.get(rank, 2.0 if d_out == 64 else 0.5)

    first = budget_ranks(plans, spectra, 0.5, "params", 0, 8)
    assert first["slow"] is not None
    ranks, kept = speed_ranks(plans, spectra, 0.5, "params", 0, 8, batch=8, timer=timer)
    assert kept == {"slow"} and ranks["slow"] is None and ranks["fast"] is not None
    assert ranks["fast"] < first["fast"]  # the dense layer's cost came out of the other's rank
    cost = sum(p.cost(ranks[p.name], "params") for p in plans)
    assert cost <= 0.5 * sum(p.dense for p in plans)


def test_tail_energy():
    tail = tail_energy(torch.tensor([2.0, 1.0, 1.0]))
    assert torch.allclose(tail, torch.tensor([1.0, 2 / 6, 1 / 6, 0.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def micro_and_stats():
    torch.manual_seed(0)
    vit = create_backbone("deit_micro").eval()
    for p in vit.parameters():
        p.data.normal_(0, 0.2)  # jax init zeroes the head: give every output something to lose
    names = [n for n, _ in eligible_linears(vit, ())]
    batches = [{"image": torch.rand(16, 3, 64, 64)} for _ in range(2)]
    return vit, collect_calibration(vit, names, batches, lambda b: vit(b["image"]))


@pytest.mark.parametrize("opts", [{"params": 0.5}, {"params": 0.5, "alloc": "budget"},
                                  {"params": 0.5, "alloc": "budget", "init": "whitened"},
                                  {"flops": 0.5, "alloc": "budget", "init": "asvd"}])
def test_svd_students_at_a_budget_meet_it(micro_and_stats, opts):
    vit, cal = micro_and_stats
    student = create_method("svd", **opts).build_student(vit, cal)
    if "params" in opts:
        assert count_params(student) <= 0.5 * count_params(vit)
        assert count_params(student) > 0.45 * count_params(vit)  # and spend most of it
    ranks = {m.rank for m in lowrank_modules(student).values()}
    assert ranks and (opts.get("alloc", "uniform") == "uniform" or all(r % 8 == 0 for r in ranks))


def test_whitened_student_is_closer_to_the_teacher_on_its_calibration_data(micro_and_stats):
    vit, cal = micro_and_stats
    x = torch.rand(16, 3, 64, 64)
    with torch.no_grad():
        ref = vit(x)
        err = {init: float((create_method("svd", init=init, ratio=3.0).build_student(vit, cal)(x) - ref)
                           .square().mean()) for init in ("svd", "whitened", "asvd")}
    assert err["whitened"] < err["svd"]


def test_factorising_options_are_checked_and_the_defaults_keep_old_hashes():
    with pytest.raises(PelaBenchError, match="init='qr'"):
        create_method("svd", init="qr")
    with pytest.raises(PelaBenchError, match="alloc=budget spends a budget"):
        create_method("pela", alloc="budget")
    with pytest.raises(PelaBenchError, match="ratio and params both"):
        create_method("svd", ratio=2.0, params=0.5)
    with pytest.raises(PelaBenchError, match=r"params=1.5"):
        create_method("svd", params=1.5)
    with pytest.raises(PelaBenchError, match="takes no compression ratio|has no option"):
        create_method("lora", init="whitened")
    assert create_method("svd").describe() == {"method": "svd", "ratio": None}
    assert create_method("svd", init="whitened").describe()["init"] == "whitened"
    assert create_method("svd", init="whitened").calibration_batches() == 8
    assert create_method("svd", params=0.5).calibration_batches() == 0
    assert create_method("svd", params=0.5).compression_ratio(None) is None
    with pytest.raises(PelaBenchError, match="need calibration"):
        create_method("svd", init="whitened").build_student(create_backbone("deit_micro"))


def test_factorize_refuses_a_rank_for_a_layer_that_is_not_linear():
    vit = create_backbone("deit_micro")
    with pytest.raises(PelaBenchError, match="'model.norm' is not a dense linear"):
        factorize(vit, ranks={"model.norm": 4})


@pytest.mark.parametrize("shape", [(96, 256), (256, 96)])
def test_randomized_solver_is_close_to_the_exact_truncation_and_deterministic(shape):
    from methods.lowrank import randomized_svd, truncated_svd

    g = torch.Generator().manual_seed(0)
    flat = torch.randn(*shape, generator=g) / shape[1] ** 0.5  # a random init: the hardest, flattest spectrum
    u, _, vh = torch.linalg.svd(torch.randn(*shape, generator=g), full_matrices=False)
    decaying = (u * torch.logspace(0, -3, min(shape))) @ vh  # a trained layer's decay
    r = 24
    for w, tolerance in ((flat, 0.10), (decaying, 0.01)):
        best = float(torch.linalg.svdvals(w.double())[r:].square().sum().sqrt())
        p, s, qh = truncated_svd(w, r, "randomized")
        err = float((w - (p * s) @ qh).double().norm())
        assert best <= err * (1 + 1e-4) and err <= best * (1 + tolerance)
        again = randomized_svd(w, r)
        assert torch.equal(again[0], p) and torch.equal(again[2], qh)
    lin = nn.Linear(shape[1], shape[0])
    fast = LowRankLinear.from_linear(lin, r, "randomized")
    exact = LowRankLinear.from_linear(lin, r, "exact")
    with torch.no_grad():
        gap = (lin.weight - fast.recovered_weight()).norm() / (lin.weight - exact.recovered_weight()).norm()
    assert 1 - 1e-4 <= float(gap) <= 1.10
    with pytest.raises(PelaBenchError, match="solver='qr'"):
        create_method("svd", solver="qr")
