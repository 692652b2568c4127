"""TinyBERT, MaskAlign and ToMe on the ALBEF-style model: depth-halved image and text stacks (momentum
copies alike), per-group layer maps, each method's loss on a vision-language batch."""

from __future__ import annotations

import pytest
import torch

from backbones import create_backbone
from common.objective import ModelObjective
from common.params import count_params
from methods import create_method
from methods.tinybert import halve_depth


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
