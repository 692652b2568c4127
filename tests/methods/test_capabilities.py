"""Methods ask a backbone's declared capabilities (`BackboneInfo`), never its family."""

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import methods
from backbones import create_backbone
from common.errors import PelaBenchError
from methods import create_method, list_methods, method_class
from methods.tinybert import halve_depth


@pytest.fixture(scope="module")
def vit_info():
    with torch.device("meta"):
        return create_backbone("deit_micro").info


@pytest.fixture(scope="module")
def swin_info():
    with torch.device("meta"):
        return create_backbone("swin_micro").info


def toy(info, **changes):
    """The real info under another name, with some capabilities changed."""
    return replace(info, name="toy_net", **changes)


def test_the_real_micro_backbones_declare_what_the_methods_need(vit_info, swin_info):
    assert vit_info.halvable_stages and vit_info.attention_scores and vit_info.token_merging
    assert vit_info.masking == "drop" and vit_info.adapter_targets and vit_info.pretrain_task == "cls"
    assert swin_info.halvable_stages and swin_info.attention_scores and not swin_info.token_merging
    assert swin_info.masking == "mask_token" and swin_info.adapter_targets
    for name in list_methods():
        method_class(name).check_backbone(vit_info)  # every method applies to a plain ViT
        if name != "tome":
            method_class(name).check_backbone(swin_info)
        # the unchanged info under another name is fine too: nothing asks the name or family
        method_class(name).check_backbone(toy(vit_info, family="something_new"))


@pytest.mark.parametrize("method,changes,why", [
    ("tinybert", {"halvable_stages": False}, "block stages"),
    ("tinybert", {"attention_scores": False}, "attention"),
    ("maskalign", {"halvable_stages": False}, "block stages"),
    ("maskalign", {"masking": None}, "hide image patches"),
    ("maskalign", {"masking": "drop", "attention_scores": False}, "attention"),
    ("tome", {"token_merging": False}, "token merging"),
    ("lora", {"adapter_targets": ()}, "adapter targets"),
])
def test_a_missing_capability_is_refused_with_a_reason(vit_info, method, changes, why):
    with pytest.raises(PelaBenchError, match=f"{method} does not apply to toy_net: .*{why}"):
        method_class(method).check_backbone(toy(vit_info, **changes))


def test_only_the_needed_capability_counts(vit_info, swin_info):
    # a masked student with mask tokens needs no attention (it draws its masks at random)
    method_class("maskalign").check_backbone(toy(swin_info, attention_scores=False))
    # methods that need none of these capabilities ignore them
    bare = toy(vit_info, halvable_stages=False, attention_scores=False, token_merging=False, masking=None)
    for name in ("dense", "svd", "svd_ft", "pela", "pela_no_fd", "pela_no_rwp", "pc_lora", "lora"):
        method_class(name).check_backbone(bare)
    method_class("tome").check_backbone(toy(swin_info, token_merging=True))


def _with_info(**changes):
    b = create_backbone("deit_micro", num_classes=4)
    b.info = toy(b.info, **changes)
    return b


def test_building_a_student_checks_the_capabilities_too():
    with pytest.raises(PelaBenchError, match="does not apply to toy_net: .*block stages"):
        halve_depth(_with_info(halvable_stages=False))
    with pytest.raises(PelaBenchError, match="does not apply to toy_net: .*block stages"):
        create_method("tinybert").build_student(_with_info(halvable_stages=False))
    with pytest.raises(PelaBenchError, match="maskalign does not apply to toy_net: .*hide image patches"):
        create_method("maskalign").build_student(_with_info(masking=None))
    with pytest.raises(PelaBenchError, match="maskalign does not apply to toy_net: .*attention"):
        create_method("maskalign").build_student(_with_info(attention_scores=False))
    with pytest.raises(PelaBenchError, match="tome does not apply to toy_net"):
        create_method("tome").build_student(_with_info(token_merging=False))
    with pytest.raises(PelaBenchError, match="toy_net"):
        create_method("lora").build_student(_with_info(adapter_targets=()))


def test_a_student_follows_the_declared_masking():
    # the same ViT declared "mask_token" gets a mask token; declared "drop" it does not
    assert hasattr(create_method("maskalign").build_student(_with_info(masking="mask_token")), "mask_token")
    assert not hasattr(create_method("maskalign").build_student(_with_info(masking="drop")), "mask_token")


def test_no_method_branches_on_the_family():
    files = sorted(Path(methods.__file__).parent.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        text = path.read_text()
        assert "info.family" not in text and ".family ==" not in text, path.name
        assert not re.search(r"\.family\s*(==|!=|\bin\b)|getattr\([^)]*['\"]family['\"]", text), path.name


def test_unsupported_needs():
    reason = create_method("tome").unsupported(("pyramid",))
    assert isinstance(reason, str) and reason
    assert create_method("pela").unsupported(("pyramid",)) is None
    for name in list_methods():
        m = create_method(name)
        assert m.unsupported(()) is None
        if name != "tome":
            assert m.unsupported(("pyramid",)) is None, name
    assert method_class("tome").lacks["pyramid"] == reason
    assert "grounding" in create_method("tome").unsupported(("patch_grid",))  # Grad-CAM needs the patch grid
