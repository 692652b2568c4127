import io

import pytest
import torch

import methods.maskalign
from benchmark.config import SuiteConfig, validate
from common.errors import PelaBenchError
from common.params import count_params
from methods import create_method
from methods.maskalign import DynamicAlignment, random_cell_mask, teacher_guided_keep
from methods.tinybert import halve_depth


def test_keeps_the_patches_the_class_token_attends_to():
    scores = torch.full((1, 2, 6), -10.0)
    scores[0, :, 3] = 5.0  # patch 2 (token 3) gets the attention
    scores[0, :, 5] = 4.0  # then patch 4
    assert teacher_guided_keep(scores, 2).tolist() == [[2, 4]]


def test_student_sees_only_the_visible_tokens(teacher):
    student = halve_depth(teacher)
    assert student.num_prefix_tokens == 1
    keep_idx = torch.tensor([[0, 5, 9], [1, 2, 3]])
    feats = student.forward_visible(torch.randn(2, 3, 64, 64), keep_idx)
    assert len(feats) == 3 and feats[0].shape == (2, 1 + 3, 48)
    # the helpers that reached into timm models are gone: the backbone runs its own masked forward
    assert not hasattr(methods.maskalign, "forward_visible")
    assert not hasattr(methods.maskalign, "forward_masked_swin")


def test_visible_forward_with_every_patch_is_the_plain_forward(teacher):
    x = torch.randn(1, 3, 64, 64)
    everything = torch.arange(64)[None]
    assert all(torch.allclose(a, b, atol=1e-6)
               for a, b in zip(teacher.forward_visible(x, everything), teacher.features({"image": x})["blocks"]))


def test_masked_forward_with_nothing_hidden_is_the_plain_forward(swin_teacher):
    x = torch.randn(1, 3, 64, 64)
    visible = torch.ones(1, 32, 32, dtype=torch.bool)
    outs = swin_teacher.forward_masked(x, visible, torch.zeros(32))
    ref = swin_teacher.features({"image": x})["blocks"]
    assert len(outs) == 5 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))
    hidden = swin_teacher.forward_masked(x, ~visible, torch.zeros(32))
    assert not torch.allclose(hidden[0], ref[0])


def test_alignment_starts_at_the_mapped_blocks_and_is_dropped_after_training(teacher, make_batch, objective):
    m = create_method("maskalign")
    student = m.build_student(teacher)
    align = student.alignment
    assert isinstance(align, DynamicAlignment) and align.stages == [0, 0, 0]
    assert not hasattr(student, "mask_token")  # a ViT drops hidden tokens instead
    assert torch.allclose(align.mix.softmax(-1).argmax(-1), torch.arange(3))
    feats = [torch.randn(1, 4, 48) for _ in range(3)]
    out = align(feats)
    assert torch.allclose(out[1], feats[1], atol=1e-2)  # identity adapters, weight ~1 on block 1
    terms = m.loss(student, teacher, make_batch(2), objective)
    assert set(terms) == {"loss", "align", "base"} and terms["align"] > 0
    assert torch.isclose(terms["loss"], terms["align"] + terms["base"])
    terms["loss"].backward()
    assert align.mix.grad is not None and all(p.grad is None for p in teacher.parameters())
    with_module = count_params(student)
    final = m.finalize(student)
    assert not hasattr(final, "alignment") and count_params(final) < with_module
    assert count_params(final) == count_params(halve_depth(teacher))


def test_mask_ratio_sets_the_visible_count(teacher, make_batch, objective):
    m = create_method("maskalign", mask_ratio=0.75, base_weight=0.0)
    student = m.build_student(teacher)
    seen = []
    student.model.blocks[0].register_forward_hook(lambda _m, _i, out: seen.append(out.shape[1]))
    terms = m.loss(student, teacher, make_batch(1), objective)
    assert seen == [1 + 16] and set(terms) == {"loss", "align"}  # 25 % of 64 patches + class token


def test_swin_student_sees_mask_tokens_and_aligns_per_stage(swin_teacher, make_batch, objective):
    torch.manual_seed(0)
    validate(SuiteConfig(backbone="swin_micro", methods=("maskalign",)))
    teacher = swin_teacher
    m = create_method("maskalign")
    student = m.build_student(teacher)
    assert student.alignment.stages == [0, 1, 2, 3]
    assert student.mask_token.shape == (teacher.info.embed_dims[0],)
    terms = m.loss(student, teacher, make_batch(2), objective)
    assert set(terms) == {"loss", "align", "base"} and terms["align"] > 0
    terms["loss"].backward()
    assert student.mask_token.grad is not None and student.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    final = m.finalize(student)
    assert not hasattr(final, "mask_token") and not hasattr(final, "alignment")
    assert count_params(final) == count_params(halve_depth(teacher))


def test_random_cell_mask_hides_whole_cells():
    v = random_cell_mask(3, 32, 8, 0.75, torch.Generator().manual_seed(0))
    assert v.shape == (3, 32, 32)
    assert (v.float().mean(dim=(1, 2)) == 0.25).all()
    cells = v.reshape(3, 4, 8, 4, 8)
    assert ((cells.all(dim=(2, 4))) | (~cells).all(dim=(2, 4))).all()  # each 8 x 8 cell all or nothing


def _draws(method, n=2):
    return [random_cell_mask(2, 32, 4, 0.7, method._generator) for _ in range(n)]


def test_state_dict_round_trip_restores_the_mask_generator(swin_teacher, make_batch, objective):
    m = create_method("maskalign")
    student = m.build_student(swin_teacher)
    m.loss(student, swin_teacher, make_batch(2), objective)  # the loss draws its masks from the generator
    state = m.state_dict()
    after_save = _draws(m)
    assert not torch.equal(after_save[0], after_save[1])  # the draws do move the generator on
    # through a checkpoint file as the trainer writes and reads it (weights_only)
    buf = io.BytesIO()
    torch.save({"extra": state}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["extra"]
    m.load_state_dict(loaded)
    assert all(torch.equal(a, b) for a, b in zip(_draws(m), after_save))
    # a fresh method (as after a restart) continues the same stream once loaded
    fresh = create_method("maskalign")
    fresh.build_student(swin_teacher)
    assert not torch.equal(_draws(fresh, 1)[0], after_save[0])
    fresh.load_state_dict(loaded)
    assert all(torch.equal(a, b) for a, b in zip(_draws(fresh), after_save))


def test_the_masks_come_from_the_method_generator_only(swin_teacher, make_batch, objective):
    # Two losses from one saved state are identical, whatever the global RNG does in between.
    m = create_method("maskalign", base_weight=0.0)
    student = m.build_student(swin_teacher)
    batch = make_batch(2)
    state = m.state_dict()
    first = m.loss(student, swin_teacher, batch, objective)["align"]
    m.load_state_dict(state)
    torch.manual_seed(123)
    again = m.loss(student, swin_teacher, batch, objective)["align"]
    assert torch.equal(first, again)
    assert not torch.equal(m.loss(student, swin_teacher, batch, objective)["align"], first)


def test_attentive_masking_skips_every_prefix_token():
    scores = torch.tensor([[[0.0, 0.0, 5.0, 1.0, 4.0, 2.0]]])  # one head: a class token, one register, 4 patches
    assert teacher_guided_keep(scores, 2, prefix=2).tolist() == [[0, 2]]


def test_a_vit_without_a_class_token_declares_no_attentive_masking():
    from backbones import create_backbone

    with torch.device("meta"):
        info = create_backbone("timm:vit_base_patch16_reg4_gap_256").info
    assert info.masking is None
    with pytest.raises(PelaBenchError, match="hide image patches"):
        create_method("maskalign").check_backbone(info)
