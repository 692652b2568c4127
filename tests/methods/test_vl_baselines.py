"""TinyBERT, MaskAlign and ToMe on the vision-language models. ALBEF: depth-halved image and text stacks
(momentum copies alike), per-group layer maps, each method's loss on a vision-language batch. CLIP: both
towers halved, the image tower's attention scores equal to nn.MultiheadAttention's, the visible-patch
pass, and ToMe on open_clip's blocks (exact at r=0)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backbones import create_backbone
from common.objective import ModelObjective
from common.params import count_params
from methods import create_method
from methods.tinybert import halve_depth
from methods.tome import apply_tome


@pytest.fixture(scope="module")
def albef():
    torch.manual_seed(0)
    model = create_backbone("albef_tiny", vocab_size=60, queue_size=64).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 60, (n, 10), generator=g)
    labels = torch.full((n, 10), -100)
    labels[:, 2] = ids[:, 2]
    mlm = ids.clone()
    mlm[:, 2] = 4
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text_ids": ids, "text_mask": torch.ones(n, 10, dtype=torch.long),
            "mlm_ids": mlm, "mlm_labels": labels, "image_id": torch.arange(n)}


def test_albef_halves_its_image_encoder_and_both_text_stacks(albef):
    student = halve_depth(albef)
    # albef_tiny: 4 image blocks, 2 text-only + 2 fusion layers -> 2 blocks, 1 + 1 layers.
    assert len(student.visual.blocks) == len(student.visual_m.blocks) == 2 and student.layer_map == [1, 3]
    assert len(student.text.layers) == len(student.text_m.layers) == 2 and student.text.cfg.fusion_start == 1
    assert student.text.layers[0].cross_attn is None and student.text.layers[1].cross_attn is not None
    assert torch.equal(student.text.layers[1].fc1.weight, albef.text.layers[3].fc1.weight)
    assert student.layer_maps == {"image": [0, 2, 4], "text": [0, 2], "fusion": [0, 2, 4]}
    assert len(albef.visual.blocks) == 4 and albef.text.cfg.fusion_start == 2  # the teacher is untouched
    with torch.no_grad():
        feats, t_feats = student.features(_batch()), albef.features(_batch())
    for group, layer_map in student.layer_maps.items():
        assert len(feats[group]) == len(layer_map) and max(layer_map) < len(t_feats[group])
    student.train().momentum_update()  # every online weight still has its EMA twin
    assert count_params(student) < 0.6 * count_params(albef)


def test_albef_base_tinybert_student_size():
    with torch.device("meta"):
        student = halve_depth(create_backbone("albef_base", mlm=False))
    # ViT-B/16 to 6 blocks, BERT's 6 + 6 layers to 3 + 3; momentum copies counted.
    assert len(student.visual.blocks) == 6 and len(student.text.layers) == 6 and student.text.cfg.fusion_start == 3
    assert count_params(student) / 1e6 == pytest.approx(419.12 - 2 * (6 * 7.088 + 3 * 7.088 + 3 * 9.450), abs=0.1)


@pytest.mark.parametrize("name", ["tinybert", "maskalign"])
def test_distillation_losses_on_a_vision_language_batch(albef, name):
    method = create_method(name)
    student = method.build_student(albef).train()
    method.on_step(student, 0.0)
    terms = method.loss(student, albef, _batch(), ModelObjective("vlp"))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    expected = {"tinybert": {"attn", "hidden"}, "maskalign": {"align", "base"}}[name]
    assert expected <= set(terms)
    assert student.visual.blocks[0].attn.qkv.weight.grad is not None
    if name == "tinybert":
        method.on_step(student, 0.9)  # the prediction stage: ALBEF's own (momentum-distilled) objective
        late = method.loss(student, albef, _batch(), ModelObjective("vlp"))
        assert set(late) == {"loss", "base"}
    else:
        assert not hasattr(method.finalize(student), "alignment")


def test_tome_merges_the_image_tokens_the_fusion_layers_read(albef):
    student = create_method("tome").build_student(albef).eval()
    batch = _batch(2)
    with torch.no_grad():
        tokens = student.encode_image(batch["image"])
        assert tokens.shape[1] < albef.encode_image(batch["image"]).shape[1]
        assert student(batch["image"], batch["text_ids"], batch["text_mask"]).shape == (2, 2)
        again = student.encode_image(batch["image"])  # the merge state resets per forward
    assert again.shape == tokens.shape


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model = create_backbone("clip_tiny", vocab_size=60).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_clip_halves_both_towers(clip):
    student = halve_depth(clip)
    # clip_tiny: 4 image and 4 text blocks -> blocks 2 and 4 of each; one state per block in every group.
    assert student.layer_maps == {"image": [1, 3], "text": [1, 3]} and student.layer_map == [1, 3]
    assert len(student.blocks()) == 2 and len(student.model.transformer.resblocks) == 2 and student.info.depth == 2
    kept, original = student.model.transformer.resblocks[1], clip.model.transformer.resblocks[3]
    assert torch.equal(kept.mlp.c_fc.weight, original.mlp.c_fc.weight)
    assert len(clip.blocks()) == 4 and len(clip.model.transformer.resblocks) == 4  # the teacher is untouched
    with torch.no_grad():
        feats, t_feats = student.features(_batch()), clip.features(_batch())
    assert {g: len(v) for g, v in feats.items()} == {"image": 2, "text": 2}
    for group, layer_map in student.layer_maps.items():
        for m, t in enumerate(layer_map):
            assert feats[group][m].shape == t_feats[group][t].shape
    assert count_params(student) < 0.6 * count_params(clip)


def test_clip_attention_scores_are_multihead_attentions(clip):
    image = _batch(2)["image"]
    with torch.no_grad(), clip.attention_scores() as scores:
        clip.encode_image(image)
        x = clip.model.visual._embeds(image)
    assert len(scores) == 4 and scores[0].shape == (2, 2, 65, 65)  # 64 patches + the class token, 2 heads
    blk = clip.blocks()[0]
    mha = nn.MultiheadAttention(64, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([blk.attn.q.weight, blk.attn.k.weight, blk.attn.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([blk.attn.q.bias, blk.attn.k.bias, blk.attn.v.bias]))
        h = blk.ln_1(x)
        _, weights = mha(h, h, h, need_weights=True, average_attn_weights=False)
    assert torch.allclose(scores[0].softmax(-1), weights, atol=1e-5)


def test_clip_visible_pass_with_every_patch_is_the_full_pass(clip):
    image = _batch(2)["image"]
    with torch.no_grad():
        full = clip.image_block_states(image)
        visible = clip.forward_visible(image, torch.arange(64).expand(2, -1))
        some = clip.forward_visible(image, torch.tensor([[0, 5, 9], [1, 2, 63]]))
    assert len(full) == len(visible) == 4 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(full, visible))
    assert some[-1].shape == (2, 4, 64)


@pytest.mark.parametrize("name", ["tinybert", "maskalign"])
def test_distillation_losses_on_clip(clip, name):
    method = create_method(name)
    student = method.build_student(clip).train()
    method.on_step(student, 0.0)
    batch = {k: _batch()[k] for k in ("image", "text_ids", "text_mask", "image_id")}
    terms = method.loss(student, clip, batch, ModelObjective("vlp"))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert {"tinybert": {"attn", "hidden"}, "maskalign": {"align", "base"}}[name] <= set(terms)
    assert student.blocks()[0].attn.q.weight.grad is not None
    if name == "tinybert":
        assert terms["attn"] > 0 and terms["hidden"] > 0
    else:
        assert not hasattr(method.finalize(student), "alignment")


def test_tome_on_clip_merges_image_tokens_and_is_exact_without_merging(clip):
    batch = _batch(2)
    exact = copy.deepcopy(clip)
    apply_tome(exact.model.visual, 0)
    student = create_method("tome").build_student(clip).eval()
    with torch.no_grad():
        assert torch.allclose(exact.encode_image(batch["image"]), clip.encode_image(batch["image"]), atol=1e-6)
        merged = student.encode_image(batch["image"])
        assert student.model.visual.tome.tokens_per_layer == [60, 55, 50, 45]  # default r: 5 of 65 per block
        assert merged.shape == clip.encode_image(batch["image"]).shape
        assert not torch.allclose(merged, clip.encode_image(batch["image"]), atol=1e-4)
        assert student(batch["image"], batch["text_ids"], batch["text_mask"]).shape == (2,)
        student.encode_image(batch["image"])  # the merge state resets per forward
        assert student.model.visual.tome.tokens_per_layer == [60, 55, 50, 45]


def test_clip_b16_depth_halved_student_size():
    with torch.device("meta"):
        teacher = create_backbone("clip_b16")
        student = halve_depth(teacher)
    # 12 + 12 blocks -> 6 + 6: the student is the teacher less six blocks of each tower.
    image_block, text_block = count_params(teacher.blocks()[0]), count_params(teacher.model.transformer.resblocks[0])
    assert count_params(student) == count_params(teacher) - 6 * image_block - 6 * text_block
    assert count_params(student) / 1e6 == pytest.approx(88.2, abs=0.1)
