"""`keep_full_rank`: which linear layers the factorising methods leave dense (Tables 2/3's Swin)."""

import pytest
import torch

from backbones import create_backbone
from common.errors import PelaBenchError
from methods import MethodOptions, create_method, lowrank_modules
from methods.pc_lora import pc_lora_layers

# Table 1's Swin preset minus attn.proj: the paper's dense-task Swin (see benchmark/paper_check.py).
SWIN_DENSE = ["head*", "patch_embed*", "norm", "downsample*"]


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return create_backbone("swin_micro", num_classes=4).eval()


def test_default_is_the_backbone_preset_and_a_list_replaces_it(swin):
    default = lowrank_modules(create_method("svd").build_student(swin))
    assert default and not any(name.endswith("attn.proj") for name in default)
    custom = lowrank_modules(create_method("svd", keep_full_rank=SWIN_DENSE).build_student(swin))
    assert {n for n in custom if n.endswith("attn.proj")}, "attn.proj should now be factorised"
    assert set(default) < set(custom)
    assert not any(n.startswith(("head", "patch_embed")) or ".downsample." in n for n in custom)


def test_pela_and_pc_lora_follow_it(swin):
    pela = lowrank_modules(create_method("pela", keep_full_rank=SWIN_DENSE).build_student(swin))
    pc = pc_lora_layers(create_method("pc_lora", keep_full_rank=SWIN_DENSE).build_student(swin))
    assert set(pela) == set(pc) and any(n.endswith("attn.proj") for n in pc)


def test_bad_values_and_non_factorising_methods_are_errors():
    # wrong types are caught by create_method's type check, naming the option
    with pytest.raises(PelaBenchError, match=r"option keep_full_rank='head\*': svd expects a list of strings"):
        create_method("svd", keep_full_rank="head*")
    with pytest.raises(PelaBenchError, match=r"option keep_full_rank=\['head\*', 3\]: pela expects a list of strings"):
        create_method("pela", keep_full_rank=["head*", 3])
    # a list of strings with an empty pattern passes the type check; the options refuse it
    with pytest.raises(PelaBenchError, match="keep_full_rank must be a list of layer-name patterns"):
        create_method("pela", keep_full_rank=["head*", ""])
    with pytest.raises(PelaBenchError, match="keep_full_rank must be a list"):  # the options class, used directly
        MethodOptions(keep_full_rank="head*")
    with pytest.raises(PelaBenchError, match="lora takes no keep_full_rank"):
        create_method("lora", keep_full_rank=["head*"])


def test_a_tuple_of_patterns_is_kept_as_a_list():
    assert create_method("svd", keep_full_rank=("head*", "norm")).options.keep_full_rank == ["head*", "norm"]


def test_the_default_leaves_the_config_hash_as_before():
    # Stored rows were hashed from describe() before the option existed.
    assert "keep_full_rank" not in create_method("pela").describe()
    assert create_method("pela", keep_full_rank=SWIN_DENSE).describe()["keep_full_rank"] == SWIN_DENSE
