from dataclasses import replace

import pytest
import torch

import methods.lora
from backbones import create_backbone
from benchmark.config import SuiteConfig, validate
from common.errors import PelaBenchError
from common.params import count_params
from methods import create_method
from methods.lora import adapter_targets


def _adapted(student):
    return {n.rsplit(".lora_A", 1)[0] for n, _ in student.named_parameters() if ".lora_A." in n}


def test_adapter_targets_are_the_block_linears_the_backbone_names(teacher, swin_teacher):
    assert not hasattr(methods.lora, "TARGET_MODULES")  # the tuner holds no model's names
    names = adapter_targets(teacher)
    assert len(names) == 4 * teacher.depth
    assert {n.split(".")[-1] for n in names} == {"qkv", "proj", "fc1", "fc2"}
    assert all(n.startswith("model.blocks.") for n in names)  # names inside the backbone
    swin_names = adapter_targets(swin_teacher)
    assert len(swin_names) == 4 * swin_teacher.depth
    assert not any("downsample" in n or n.startswith("model.head") for n in swin_names)


def test_adapter_targets_follow_the_info():
    b = create_backbone("deit_micro", num_classes=4)
    b.info = replace(b.info, adapter_targets=("mlp.fc1",))
    assert adapter_targets(b) == [f"model.blocks.{i}.mlp.fc1" for i in range(6)]
    student = create_method("lora", rank=2).build_student(b)
    assert _adapted(student) == {f"model.blocks.{i}.mlp.fc1" for i in range(6)}


def test_adapters_on_block_linears_only(teacher):
    student = create_method("lora").build_student(teacher)
    adapted = _adapted(student)
    assert len(adapted) == 4 * teacher.depth
    assert adapted == set(adapter_targets(teacher))
    assert all(n.split(".")[-1] in ("qkv", "proj", "fc1", "fc2") and ".blocks." in n for n in adapted)
    assert not any("patch_embed" in n for n in adapted)


def test_swin_adapters_match_exact_names_only(swin_teacher):
    student = create_method("lora", rank=2).build_student(swin_teacher)
    assert _adapted(student) == set(adapter_targets(swin_teacher))


def test_starts_equal_and_counts_frozen_plus_adapters(teacher):
    student = create_method("lora", rank=4).build_student(teacher).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(student(x), teacher(x))  # B is zero-initialised
    # qkv 48->144, proj 48->48, fc1 48->192, fc2 192->48, each adapter r * (in + out)
    per_block = 4 * ((48 + 144) + (48 + 48) + (48 + 192) + (192 + 48))
    assert count_params(student) == count_params(teacher) + 6 * per_block


def test_base_weights_stay_frozen_while_adapters_train(teacher, make_batch, objective):
    torch.manual_seed(0)
    m = create_method("lora", rank=4)
    student = m.build_student(teacher)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(4)
    for _ in range(2):
        opt.zero_grad()
        terms = m.loss(student, teacher, batch, objective)
        assert set(terms) == {"loss", "base"}  # LoRA trains on the base objective alone
        terms["loss"].backward()
        opt.step()
    changed = {n for n, p in student.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n or n.startswith("model.head.") for n in changed)
    assert any("lora_B" in n for n in changed)


def test_the_classifier_trains_only_with_train_head(teacher):
    with_head = create_method("lora", rank=2).build_student(teacher)
    trainable = {n for n, p in with_head.named_parameters() if p.requires_grad}
    assert {"model.head.weight", "model.head.bias"} <= trainable
    assert all("lora_" in n or n.startswith("model.head.") for n in trainable)
    without = create_method("lora", rank=2, train_head=False).build_student(teacher)
    assert all("lora_" in n for n, p in without.named_parameters() if p.requires_grad)


def test_swin_classifier_inside_its_head_module_trains(swin_teacher):
    # Swin's classifier is `head` and its weights sit one level down, in `head.fc`.
    trainable = {n for n, p in create_method("lora", rank=2).build_student(swin_teacher).named_parameters()
                 if p.requires_grad}
    assert {"model.head.fc.weight", "model.head.fc.bias"} <= trainable
    assert all("lora_" in n or n.startswith("model.head.") for n in trainable)


def test_a_backbone_whose_targets_match_nothing_is_refused():
    b = create_backbone("deit_micro", num_classes=4)
    b.info = replace(b.info, name="toy_vit", adapter_targets=("nothing.here",))
    with pytest.raises(PelaBenchError, match="no linear layer of toy_vit matches"):
        create_method("lora").build_student(b)


def test_lora_with_a_ratio_is_refused():
    with pytest.raises(PelaBenchError, match="lora takes no compression ratio"):
        validate(SuiteConfig(methods=("lora",), ratios=(2.0,)))
