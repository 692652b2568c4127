import pytest
import torch
from torch import nn

import common
import methods
import methods.lowrank
from backbones import create_backbone
from common.errors import PelaBenchError
from common.params import count_params
from methods.lowrank import LowRankLinear, factorize, lowrank_modules, lowrank_rank, matches_any, truncated_svd


def test_count_params_lives_in_common_and_counts_shared_tensors_once():
    assert common.count_params is count_params
    assert not hasattr(methods, "count_params") and not hasattr(methods.lowrank, "count_params")
    b, c = nn.Linear(3, 3), nn.Linear(3, 3)
    c.weight = b.weight  # tied weights: one tensor in two layers
    assert count_params(nn.Sequential(b, c)) == 9 + 3 + 3
    a = nn.Linear(4, 3)
    shared = nn.Sequential(a, a)  # one layer used twice
    assert count_params(shared) == 4 * 3 + 3
    frozen = nn.Linear(4, 3).requires_grad_(False)  # trainable or not, every parameter counts
    assert count_params(frozen) == 15


def test_rank_formula():
    # DeiT-B's qkv at ratio 2: floor(768 * 2304 / (2 * 3072)) = 288
    assert lowrank_rank(768, 2304, 2) == 288
    assert lowrank_rank(768, 3072, 2) == 307
    assert lowrank_rank(4, 4, 100) == 1


@pytest.mark.parametrize("solver", ["gram", "exact"])
@pytest.mark.parametrize("shape", [(48, 32), (32, 48)])
def test_factors_are_the_best_rank_r_approximation(solver, shape):
    torch.manual_seed(0)
    lin = nn.Linear(shape[1], shape[0])
    r = 10
    lr = LowRankLinear.from_linear(lin, r, solver)
    s = torch.linalg.svdvals(lin.weight.detach())
    # Eckart-Young: the Frobenius error of the best rank-r approximation
    best = s[r:].pow(2).sum().sqrt()
    err = torch.linalg.matrix_norm(lr.recovered_weight() - lin.weight)
    assert torch.isclose(err, best, rtol=1e-4)
    # sqrt(Sigma) on both sides: the two factors have equal column / row norms
    assert torch.allclose(lr.up.weight.norm(dim=0), lr.down.weight.norm(dim=1), rtol=1e-4)
    assert torch.equal(lr.up.bias, lin.bias)


def test_full_rank_reproduces_the_layer():
    torch.manual_seed(0)
    lin = nn.Linear(16, 24)
    lr = LowRankLinear.from_linear(lin, 16)
    x = torch.randn(5, 16)
    assert torch.allclose(lr(x), lin(x), atol=1e-5)


def test_gram_and_exact_solvers_agree():
    torch.manual_seed(0)
    w = torch.randn(96, 64) * 0.02
    a = truncated_svd(w, 20, "gram")
    b = truncated_svd(w, 20, "exact")
    ra = a[0] @ torch.diag(a[1]) @ a[2]
    rb = b[0] @ torch.diag(b[1]) @ b[2]
    assert torch.allclose(ra, rb, atol=1e-5 * w.abs().max())


def test_omit_patterns_match_dotted_suffixes():
    assert matches_any("model.head", ["head"])
    assert matches_any("model.head.fc", ["head*"])
    assert matches_any("model.layers.0.blocks.1.attn.proj", ["attn.proj"])
    assert not matches_any("model.blocks.0.attn.qkv", ["attn.proj", "head"])


def test_factorize_micro_respects_omit_and_keeps_about_a_third():
    b = create_backbone("deit_micro")
    dense = count_params(b)
    factorize(b)
    mods = lowrank_modules(b)
    assert "model.head" not in mods and "model.blocks.0.attn.qkv" in mods
    assert isinstance(b.model.head, nn.Linear)
    assert 0.3 < count_params(b) / dense < 0.45  # its preset ratio is 3


@pytest.mark.parametrize(
    "name,dense_m,paper_m",
    [("deit_base", 86.6, 44.1), ("swin_base", 87.8, 62.2), ("deit3_large", 304.4, 153.2)],
)
def test_paper_presets_reproduce_table1_params(name, dense_m, paper_m):
    # Meta device: the parameter count does not need real weights, so this takes milliseconds.
    with torch.device("meta"):
        b = create_backbone(name)
        assert count_params(b) / 1e6 == pytest.approx(dense_m, rel=0.005)
        factorize(b)  # the paper preset: ratio and omitted layers from the backbone's metadata
    assert count_params(b) / 1e6 == pytest.approx(paper_m, rel=0.005)


def test_bad_ratio_is_rejected():
    b = create_backbone("deit_micro")
    with pytest.raises(PelaBenchError, match="ratio"):
        factorize(b, ratio=0.5)
    with pytest.raises(PelaBenchError, match="needs a ratio"):
        factorize(nn.Sequential(nn.Linear(4, 4)))
