"""CLIP through open_clip: linear attention equal to nn.MultiheadAttention, the low-rank core reaching every
projection, parameter counts, text pooling, the contrastive objective, and the BPE tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from backbones import create_backbone
from backbones.clip import LinearMultiheadAttention, linearize_attention
from common.errors import PelaBenchError
from common.params import count_params
from methods.lowrank import factorize, lowrank_modules

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("masks", ["none", "causal_float", "causal_bool", "padding"])
def test_linear_attention_equals_multihead_attention(masks):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    lin = LinearMultiheadAttention.from_mha(mha).eval()
    x = torch.randn(3, 7, 16)
    kwargs = {}
    if masks == "causal_float":
        kwargs["attn_mask"] = torch.full((7, 7), float("-inf")).triu(1)
    elif masks == "causal_bool":
        kwargs["attn_mask"] = torch.ones(7, 7, dtype=torch.bool).triu(1)
    elif masks == "padding":
        pad = torch.zeros(3, 7, dtype=torch.bool)
        pad[1, 5:] = True
        kwargs["key_padding_mask"] = pad
    expected = mha(x, x, x, need_weights=False, **kwargs)[0]
    got, weights = lin(x, x, x, need_weights=False, **kwargs)
    assert weights is None and torch.allclose(got, expected, atol=1e-5)


def test_open_clip_vit_b16_converted_whole_matches_the_original():
    import open_clip

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    model = linearize_attention(copy.deepcopy(ref)).eval()
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    image, text = torch.randn(1, 3, 224, 224), torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        assert torch.allclose(model.encode_image(image), ref.encode_image(image), atol=1e-4)
        assert torch.allclose(model.encode_text(text), ref.encode_text(text), atol=1e-4)
    assert count_params(model) == count_params(ref)


def test_clip_b16_counts_and_pela_reaches_the_attention_input_projections():
    with torch.device("meta"):
        model = create_backbone("clip_b16")
    assert count_params(model) / 1e6 == pytest.approx(149.6, abs=0.05)
    factorize(model)
    layers = lowrank_modules(model)
    # 12 + 12 blocks x (q, k, v, out_proj, c_fc, c_proj): nothing left dense but the bare projections.
    assert len(layers) == 24 * 6 and "model.visual.transformer.resblocks.0.attn.q" in layers
    assert count_params(model) / 1e6 == pytest.approx(67.71, abs=0.01)


def test_clip_tiny_pools_at_the_last_real_token_and_trains_contrastively():
    torch.manual_seed(0)
    model = create_backbone("clip_tiny", vocab_size=60)
    ids = torch.randint(5, 60, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[1, 6:] = 0
    feats = model.text_feat(model.encode_text(ids, mask), mask)
    other = ids.clone()
    other[1, 6:] = 7  # what sits after the text changes nothing: causal attention, pooled before it
    assert torch.allclose(feats, model.text_feat(model.encode_text(other, mask), mask), atol=1e-6)
    batch = {"image": torch.randn(4, 3, 64, 64), "text_ids": ids, "text_mask": mask}
    loss = model.objective_terms("vlp", batch)["itc"]
    loss.backward()
    assert model.model.visual.conv1.weight.grad is not None and model.model.token_embedding.weight.grad is not None
    same = model.objective_terms("itc", {**batch, "image_id": torch.tensor([0, 0, 1, 2])})["itc"]
    assert torch.isfinite(same) and not torch.isclose(same, loss)  # captions of one image are positives
    groups = model.features(batch)
    assert set(groups) == {"image", "text"} and len(groups["image"]) == 4 and len(groups["text"]) == 4
    assert model(**batch).shape == (4,)
    with pytest.raises(PelaBenchError, match="no objective 'mlm'"):
        model.objective_terms("mlm", batch)
    with pytest.raises(PelaBenchError, match="no setting"):
        create_backbone("clip_tiny", depth=3)
    with pytest.raises(PelaBenchError, match="no hub weights"):
        create_backbone("clip_tiny", weights="hub")


def test_an_open_clip_checkpoint_loads_into_the_linear_attention(tmp_path):
    import open_clip

    from backbones import load_into

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    path = tmp_path / "open_clip.pt"
    torch.save(ref.state_dict(), path)  # open_clip's own layout: attn.in_proj_weight
    model = create_backbone("clip_b16")
    load_into(model, path)
    image = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.eval().encode_image(image), ref.encode_image(image), atol=1e-4)
    again = tmp_path / "ours.pt"
    torch.save(model.state_dict(), again)  # and our own layout round-trips
    load_into(create_backbone("clip_b16"), again)


def test_bundled_bpe_tokenizer_works_offline():
    from tasks.text import ClipBpeTokenizer

    tok = ClipBpeTokenizer()
    assert len(tok) == 49408
    assert tok.decode(tok.encode("a red circle on the left", 8)) == "a red circle on the left"
    ids = tok.encode("a red circle on the left", 7)  # truncated, the end token kept
    assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) == 7
    padded, mask = tok.pad(ids, 12)
    assert padded[7:].eq(0).all() and int(mask.sum()) == 7 and tok.decode(ids) == "a red circle on the"


@pytest.mark.slow
def test_clip_b16_and_albef_base_take_a_training_step_on_cpu():
    from methods import create_method
    from common.objective import ModelObjective

    torch.manual_seed(0)
    for name, extra in (("clip_b16", {}), ("albef_base", {"img_size": 64, "queue_size": 64})):
        teacher = create_backbone(name, **({"img_size": 64} if name == "clip_b16" else extra)).eval()
        student = create_method("pela").build_student(teacher)
        vocab = teacher.text_vocab_size()
        ids = torch.randint(5, vocab, (2, 12))
        batch = {"image": torch.randn(2, 3, 64, 64), "text_ids": ids, "text_mask": torch.ones(2, 12, dtype=torch.long),
                 "mlm_ids": ids, "mlm_labels": torch.full((2, 12), -100).index_fill_(1, torch.tensor([3]), 7)}
        terms = create_method("pela").loss(student, teacher, batch, ModelObjective("vlp"))
        terms["loss"].backward()
        assert torch.isfinite(terms["loss"]) and {"base", "fd", "rwp"} <= set(terms)
