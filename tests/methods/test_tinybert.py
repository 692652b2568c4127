import pytest
import torch
import torch.nn.functional as F

import methods.tinybert
from backbones import create_backbone
from common.errors import PelaBenchError
from common.params import count_params
from methods import create_method
from methods.tinybert import halve_depth, soft_cross_entropy


def test_student_has_half_the_blocks_copied_from_the_mapped_ones(teacher):
    student = halve_depth(teacher)
    assert len(student.model.blocks) == 3 and student.info.depth == 3
    assert student.layer_map == [1, 3, 5]  # g(m) = 2m, 1-based
    for m, t in enumerate(student.layer_map):
        assert torch.equal(student.model.blocks[m].attn.qkv.weight, teacher.model.blocks[t].attn.qkv.weight)
    assert len(teacher.model.blocks) == 6 and teacher.info.depth == 6  # teacher untouched
    assert student.block_stages() == [0, 0, 0] and len(student.blocks()) == 3


def test_swin_halves_only_its_deep_stages(swin_teacher):
    # swin_micro: depths 1-1-2-1, no stage deeper than two blocks, so its two-block stage halves
    student = halve_depth(swin_teacher)
    assert [len(s.blocks) for s in student.stages()] == [1, 1, 1, 1]
    assert student.layer_map == [0, 1, 3, 4] and student.block_stages() == [0, 1, 2, 3]
    assert [len(s.blocks) for s in swin_teacher.stages()] == [1, 1, 2, 1]


@pytest.mark.parametrize("name,paper_m,rel", [("deit_base", 44.2, 0.01), ("swin_base", 58.6, 0.02)])
def test_paper_scale_params(name, paper_m, rel):
    with torch.device("meta"):
        t = create_backbone(name)
    assert count_params(halve_depth(t)) / 1e6 == pytest.approx(paper_m, rel=rel)


def test_attention_scores_match_a_manual_computation(teacher):
    x = torch.randn(2, 3, 64, 64)
    with teacher.attention_scores() as scores, teacher.capture_features() as feats:
        teacher(x)
    tokens = feats["blocks"]
    assert len(scores) == 6 and scores[0].shape == (2, 3, 65, 65)
    blk = teacher.model.blocks[1]
    h = blk.norm1(tokens[0])
    q, k, _ = blk.attn.qkv(h).reshape(2, 65, 3, 3, 16).permute(2, 0, 3, 1, 4).unbind(0)
    assert torch.allclose(scores[1], (q * blk.attn.scale) @ k.transpose(-2, -1), atol=1e-5)
    assert not any(b.attn.qkv._forward_hooks for b in teacher.model.blocks)
    assert not any(b._forward_hooks for b in teacher.model.blocks)
    assert not hasattr(methods.tinybert, "attention_scores")  # the backbone reads its own attention


def test_swin_attention_scores_are_per_window(swin_teacher):
    with swin_teacher.attention_scores() as scores:
        swin_teacher(torch.randn(1, 3, 64, 64))
    assert len(scores) == 5  # one per block
    # stage 0: a 32 x 32 grid of 4 x 4 windows -> 64 windows of 16 tokens, 1 head
    assert scores[0].shape == (64, 1, 16, 16)
    assert not any(a.qkv._forward_hooks for a in swin_teacher.attention_modules())


def test_two_stages_by_progress(teacher, make_batch, objective):
    m = create_method("tinybert")
    student = m.build_student(teacher)
    batch = make_batch(2)
    m.on_step(student, 0.1)
    first = m.loss(student, teacher, batch, objective)
    assert set(first) == {"loss", "attn", "hidden"} and first["attn"] > 0
    assert torch.isclose(first["loss"], first["attn"] + first["hidden"])
    m.on_step(student, 0.9)
    second = m.loss(student, teacher, batch, objective)
    assert set(second) == {"loss", "pred"}
    with torch.no_grad():
        expected = soft_cross_entropy(student(batch["image"]), teacher(batch["image"]), 1.0)
    assert torch.isclose(second["pred"], expected)
    second["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_intermediate_stage_pairs_student_blocks_with_mapped_teacher_blocks(teacher, make_batch, objective):
    m = create_method("tinybert")
    student = m.build_student(teacher)
    batch = make_batch(2)
    m.on_step(student, 0.0)
    terms = m.loss(student, teacher, batch, objective)
    # the student starts as copies of teacher blocks 2, 4, 6, but sees different inputs
    with torch.no_grad():
        s = student.features(batch)["blocks"]
        t = teacher.features(batch)["blocks"]
    hidden = torch.stack([F.mse_loss(s[i], t[j]) for i, j in enumerate(student.layer_map)]).mean()
    assert torch.isclose(terms["hidden"], hidden)


def test_soft_cross_entropy_is_minimal_at_the_teacher():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    assert soft_cross_entropy(t, t, 1.0) < soft_cross_entropy(torch.zeros(1, 3), t, 1.0)


def test_ratio_refused():
    with pytest.raises(PelaBenchError, match="tinybert takes no compression ratio"):
        create_method("tinybert", ratio=2.0)
