from dataclasses import replace

import pytest
import torch

from backbones import create_backbone, list_backbones
from common.errors import PelaBenchError

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def test_registry_lists_paper_and_cpu_backbones():
    names = list_backbones()
    for n in ("deit_base", "deit3_large", "swin_base", "deit_micro", "swin_micro"):
        assert n in names


def test_unknown_name_lists_known_ones():
    with pytest.raises(PelaBenchError) as e:
        create_backbone("deit_huge")
    assert "deit_huge" in str(e.value) and "deit_micro" in str(e.value) and "timm:<model>" in str(e.value)


@pytest.mark.parametrize("name", ["deit_micro", "swin_micro"])
def test_features_are_every_block_output_and_logits_are_unchanged(name):
    torch.manual_seed(0)
    b = create_backbone(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = b.features({"image": x})
    assert set(feats) == set(b.info.feature_groups) == {"blocks"}
    tokens = feats["blocks"]
    assert len(tokens) == b.depth == len(b.blocks())
    assert all(t.shape[0] == 2 for t in tokens)
    # capture_features collects during the model's own forward, which still returns the logits
    with b.capture_features() as groups:
        logits = b(x)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, b(x))
    assert len(groups["blocks"]) == b.depth
    assert all(torch.equal(a, c) for a, c in zip(tokens, groups["blocks"]))
    # hooks are removed after the block (and after features())
    assert all(not blk._forward_hooks for blk in b.blocks())
    b(x)
    assert len(groups["blocks"]) == b.depth  # nothing collected outside the block


def test_capture_features_removes_hooks_on_error():
    b = create_backbone("deit_micro").eval()
    with pytest.raises(RuntimeError):
        with b.capture_features():
            b(torch.randn(1, 3, 64, 64))
            raise RuntimeError("boom")
    assert all(not blk._forward_hooks for blk in b.blocks())


def test_metadata():
    b = create_backbone("deit_micro")
    assert b.embed_dims == (48,) and b.depth == 6 and b.paper_ratio == 3.0
    assert "head" in b.lowrank_omit
    s = create_backbone("swin_micro")
    assert len(s.embed_dims) == 4 and "attn.proj" in s.lowrank_omit


@pytest.mark.parametrize("name,family,masking,token_merging", [
    ("deit_micro", "vit", "drop", True),
    ("swin_micro", "swin", "mask_token", False),
])
def test_capabilities_declared(name, family, masking, token_merging):
    info = create_backbone(name).info
    assert info.family == family and info.pretrain_task == "cls"
    assert info.adapter_targets == ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert info.classifier == ("head",)
    assert info.halvable_stages and info.attention_scores
    assert info.token_merging is token_merging and info.masking == masking


def test_reset_classifier_updates_info():
    b = create_backbone("deit_micro", num_classes=5)
    b.reset_classifier(3)
    assert b.info.num_classes == 3 and b(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_hub_weights_refused_for_cpu_variants():
    with pytest.raises(PelaBenchError, match="no hub weights"):
        create_backbone("deit_micro", weights="hub")


def test_paper_presets_on_meta():
    """The paper presets read their metadata off the timm model, without allocating any weights."""
    with torch.device("meta"):
        deit = create_backbone("deit_base")
        swin = create_backbone("swin_base")
    assert deit.info.embed_dims == (768,) and deit.info.depth == 12 and deit.info.img_size == 224
    assert swin.info.embed_dims == (128, 256, 512, 1024) and swin.info.depth == 24 and swin.paper_ratio == 1.5
    assert replace(swin.info, name="x") != replace(deit.info, name="x")
