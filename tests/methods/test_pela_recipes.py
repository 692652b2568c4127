"""PELA's two recipes: what each gives each backbone, the options they add, and the published differences."""

import re

import pytest
import torch
import torch.nn.functional as F

from backbones import create_backbone
from common.errors import PelaBenchError
from methods import create_method, lowrank_modules
from methods.pela import forward_with_features, weight_perturbation
from methods.pela_recipes import DEFAULT_RECIPE, DIFFERENCES, PAPER_TEXT, RECIPES, recipe_settings
from reports.recipes import render_recipes


@pytest.fixture
def batch(make_batch):
    return make_batch(4)


def test_the_official_recipe_is_each_familys_script(teacher, swin_teacher):
    with torch.device("meta"):
        albef, clip = create_backbone("albef_tiny").info, create_backbone("clip_tiny").info
    deit = recipe_settings("official", teacher.info)
    assert (deit.alpha, deit.beta, deit.fd_targets) == (1.0, 0.0, "blocks")  # DeiT/main.py: inf_norm_weight 0
    swin = recipe_settings("official", swin_teacher.info)
    assert (swin.alpha, swin.beta, swin.epsilon, swin.fd_targets) == (1.0, 1.0, 0.0, "pooled")
    vl = recipe_settings("official", albef)
    assert (vl.alpha, vl.beta, vl.epsilon, vl.rwp_form, vl.rwp_reduce) == (0.1, 1.0, 1e-3, "squared", "mean")
    assert recipe_settings("official", clip) == vl  # no CLIP script: ALBEF's stands in
    assert DEFAULT_RECIPE == "official" and create_method("pela").options.recipe == "official"


def test_the_paper_recipe_is_the_text_with_the_official_alpha(teacher, swin_teacher):
    with torch.device("meta"):
        albef = create_backbone("albef_tiny").info
    for info in (teacher.info, swin_teacher.info, albef):
        paper, official = recipe_settings("paper", info), recipe_settings("official", info)
        assert {k: getattr(paper, k) for k in PAPER_TEXT} == PAPER_TEXT
        assert (paper.rwp_form, paper.rwp_reduce, paper.fd_targets, paper.beta) == ("linear", "sum", "blocks", 1.0)
        assert paper.alpha == official.alpha  # the text prints no alpha


def test_an_option_set_overrides_its_recipe_for_that_setting_alone(swin_teacher):
    m = create_method("pela", recipe="paper", beta=0.5, fd_targets=[0, -1])
    s = m.settings(swin_teacher.info)
    assert (s.beta, s.fd_targets, s.rwp_form, s.rwp_reduce) == (0.5, (0, -1), "linear", "sum")
    assert m.options_label() == 'beta=0.5 fd_targets=[0,-1]' and m.recipe() == "paper"
    assert m.resolved(swin_teacher.info)["fd_targets"] == [0, -1]  # JSON-able, saved with the row


@pytest.mark.parametrize("options, match", [
    ({"recipe": "mine"}, "recipe 'mine': choose one of official, paper"),
    ({"rwp_reduce": "max"}, "rwp_reduce='max'"),
    ({"fd_targets": "every"}, "fd_targets='every'"),
    ({"fd_targets": [1, 1]}, "lists a hidden state twice"),
    ({"fd_targets": []}, "fd_targets=\\[\\]"),
])
def test_bad_recipe_options_name_the_field(options, match):
    with pytest.raises(PelaBenchError, match=match):
        create_method("pela", **options)


def test_rwp_sums_or_averages_over_the_matrices(teacher):
    student = create_method("pela").build_student(teacher)
    k = len(lowrank_modules(student))
    mean = weight_perturbation(student, teacher, 1e-3, "linear", "mean")
    total = weight_perturbation(student, teacher, 1e-3, "linear", "sum")
    assert k > 1 and torch.isclose(total, k * mean)


def test_pooled_distillation_is_one_mse_on_the_feature_the_classifier_reads(swin_teacher, batch, objective):
    m = create_method("pela")  # official on a Swin: the pooled feature
    student = m.build_student(swin_teacher)
    output, s_feats, t_feats = forward_with_features(student, swin_teacher, batch, objective, "pooled")
    assert set(s_feats) == {"pooled"} and len(s_feats["pooled"]) == 1
    with torch.no_grad():
        expected_t = swin_teacher.pooled_features(batch["image"])
        expected_s = student.pooled_features(batch["image"])
    assert t_feats["pooled"][0].shape == (len(batch["image"]), swin_teacher.embed_dims[-1])
    assert torch.allclose(t_feats["pooled"][0], expected_t, atol=1e-6)
    assert torch.allclose(s_feats["pooled"][0], expected_s, atol=1e-6) and s_feats["pooled"][0].requires_grad
    assert torch.allclose(output, student(batch["image"]), atol=1e-6)  # one student forward gives both
    terms = m.loss(student, swin_teacher, batch, objective)
    assert terms["fd"].item() == pytest.approx(F.mse_loss(expected_s, expected_t).item(), rel=1e-5)
    assert not swin_teacher.model.get_classifier()._forward_pre_hooks  # the hook is gone afterwards


def test_indexed_distillation_compares_the_named_blocks(teacher, batch, objective):
    student = create_method("pela").build_student(teacher)
    _, s_feats, t_feats = forward_with_features(student, teacher, batch, objective, (1, -1))
    all_t = teacher.features(batch)["blocks"]
    assert len(s_feats["blocks"]) == len(t_feats["blocks"]) == 2
    assert torch.equal(t_feats["blocks"][0], all_t[1]) and torch.equal(t_feats["blocks"][1], all_t[-1])
    with pytest.raises(PelaBenchError, match="group 'blocks' has 6 hidden states"):
        forward_with_features(student, teacher, batch, objective, (6,))


def test_pooled_distillation_refuses_a_backbone_without_a_classifier():
    torch.manual_seed(0)
    albef = create_backbone("albef_tiny").eval()
    with pytest.raises(PelaBenchError, match="albef_tiny has no classifier reading a pooled feature"):
        create_method("pela", fd_targets="pooled").build_student(albef)


def test_the_published_differences_cite_the_official_files_and_show_the_code_s_settings(teacher, swin_teacher):
    text = render_recipes()
    assert len(DIFFERENCES) >= 10
    for d in DIFFERENCES:
        assert d.point in text
        # every citation is a file of the official repository with a line (or a range)
        assert re.fullmatch(r"(ALBEF|DeiT|Swin)/[\w/.]+:\d+(-\d+)?(, \d+(-\d+)?)*"
                            r"(; (ALBEF|DeiT|Swin)/[\w/.]+:\d+(-\d+)?(, \d+(-\d+)?)*)*", d.where), d.where
    for recipe in RECIPES:
        for info, family in ((teacher.info, "ViT"), (swin_teacher.info, "Swin")):
            s = recipe_settings(recipe, info)
            line = next(ln for ln in text.splitlines() if ln.startswith(f"| {recipe} | {family}"))
            assert f"| {s.alpha:g} | {s.beta:g} | {s.epsilon:g} | {s.rwp_form} | {s.rwp_reduce} | {s.fd_targets} |" \
                in line, line
