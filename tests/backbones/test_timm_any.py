"""``timm:<model>`` backbones: any timm ViT-style model or Swin, metadata read from the model itself."""

from dataclasses import replace

import pytest
import torch

from backbones import create_backbone
from backbones.swin import SwinBackbone
from backbones.vit import ViTBackbone
from common.errors import PelaBenchError
from common.params import count_params
from methods import factorize, lowrank_modules

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def vit_tiny():
    torch.manual_seed(0)
    return create_backbone("timm:vit_tiny_patch16_224", img_size=32, num_classes=5).eval()


def test_timm_vit_metadata_comes_from_the_model(vit_tiny):
    b = vit_tiny
    assert isinstance(b, ViTBackbone)
    info = b.info
    assert info.name == "timm:vit_tiny_patch16_224" and info.hub_name == "vit_tiny_patch16_224"
    assert info.family == "vit" and info.embed_dims == (192,) and info.depth == 12
    assert info.img_size == 32 and info.num_classes == 5
    assert info.paper_ratio == 2.0 and "head" in info.lowrank_omit
    # a plain timm VisionTransformer: every capability
    assert info.adapter_targets == ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2") and info.classifier == ("head",)
    assert info.halvable_stages and info.attention_scores and info.token_merging and info.masking == "drop"
    assert info.pretrain_task == "cls"


def test_timm_vit_features_and_logits(vit_tiny):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = vit_tiny.features({"image": x})
        logits = vit_tiny(x)
    blocks = feats["blocks"]
    assert len(blocks) == 12
    assert all(t.shape == (2, 1 + 4, 192) for t in blocks)  # class token + 2x2 patches
    assert logits.shape == (2, 5)
    with torch.no_grad(), vit_tiny.attention_scores() as scores:
        vit_tiny(x)
    assert len(scores) == 12 and scores[0].shape == (2, 3, 5, 5)


def test_timm_swin_metadata_and_features():
    torch.manual_seed(0)
    b = create_backbone("timm:swin_tiny_patch4_window7_224", img_size=64, num_classes=3).eval()
    assert isinstance(b, SwinBackbone)
    info = b.info
    assert info.family == "swin" and info.embed_dims == (96, 192, 384, 768) and info.depth == 12
    assert info.img_size == 64 and info.num_classes == 3 and info.hub_name == "swin_tiny_patch4_window7_224"
    assert info.halvable_stages and info.attention_scores
    assert info.token_merging is False and info.masking == "mask_token"
    assert "attn.proj" in info.lowrank_omit and info.paper_ratio == 2.0
    with torch.no_grad():
        blocks = b.features({"image": torch.randn(1, 3, 64, 64)})["blocks"]
    assert len(blocks) == 12
    # NHWC maps at stride 4, 8, 16, 32 with the stage widths (depths 2-2-6-2)
    expected = [(16, 96)] * 2 + [(8, 192)] * 2 + [(4, 384)] * 6 + [(2, 768)] * 2
    assert [(t.shape[1], t.shape[-1]) for t in blocks] == expected
    assert len(b.stages()) == 4 and b.block_stages() == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3]


def test_timm_swin_matches_the_paper_preset_on_meta():
    """timm:swin_base_... reads the same structure as the registered swin_base (no weights allocated)."""
    with torch.device("meta"):
        via_timm = create_backbone("timm:swin_base_patch4_window7_224")
        preset = create_backbone("swin_base")
    assert next(via_timm.parameters()).device.type == "meta"
    assert via_timm.info.depth == 24 and via_timm.info.img_size == 224 and via_timm.info.num_classes == 1000
    # Only the name and the paper ratio differ (models without a preset get the ViT default, 2).
    assert replace(via_timm.info, name="swin_base", paper_ratio=1.5) == preset.info


def test_timm_eva_is_vit_like_without_plain_vit_capabilities():
    with torch.device("meta"):
        b = create_backbone("timm:eva02_tiny_patch14_224", num_classes=4)
    info = b.info
    assert isinstance(b, ViTBackbone) and info.family == "vit" and info.embed_dims == (192,) and info.depth == 12
    assert info.token_merging is False and info.masking is None and info.attention_scores is False


def test_timm_eva_features_on_real_tensors():
    torch.manual_seed(0)
    b = create_backbone("timm:eva02_tiny_patch14_224", img_size=28, num_classes=4).eval()
    with torch.no_grad():
        blocks = b.features({"image": torch.randn(1, 3, 28, 28)})["blocks"]
    assert len(blocks) == b.depth == 12 and all(t.shape[-1] == 192 for t in blocks)


@pytest.mark.parametrize("name,needle", [
    ("timm:", "needs a timm model name"),
    ("timm:vit_nonexistent_model_xyz", "timm has no model 'vit_nonexistent_model_xyz'"),
    ("timm:resnet18", "neither a ViT-style model nor a Swin"),
])
def test_bad_timm_names_are_user_errors(name, needle):
    with torch.device("meta"), pytest.raises(PelaBenchError, match=needle):
        create_backbone(name)


def test_timm_rejected_override_is_a_user_error():
    with pytest.raises(PelaBenchError, match=r"rejects the settings \['bogus'\]"):
        create_backbone("timm:vit_tiny_patch16_224", bogus=1)


def test_factorize_a_timm_vit_reduces_parameters(vit_tiny):
    import copy

    student = copy.deepcopy(vit_tiny)
    before = count_params(student)
    factorize(student)  # the backbone's preset: ratio 2, head / patch_embed / norms kept dense
    after = count_params(student)
    assert after < before
    low = lowrank_modules(student)
    assert len(low) == 4 * 12  # qkv, proj, fc1, fc2 of every block
    assert not any(n.startswith("model.head") or "patch_embed" in n for n in low)
    assert count_params(vit_tiny) == before  # the teacher is untouched
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert student(x).shape == (1, 5)
        assert len(student.features({"image": x})["blocks"]) == 12


def test_timm_name_with_a_pretrained_tag():
    with torch.device("meta"):
        b = create_backbone("timm:vit_tiny_patch16_224.augreg_in21k", num_classes=5)
    assert b.info.embed_dims == (192,) and b.info.hub_name == "vit_tiny_patch16_224.augreg_in21k"
