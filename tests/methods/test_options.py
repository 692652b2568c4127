"""`create_method` checks every option value against the options class's type hints, and
`options_label` names the options set away from a method's defaults."""

import re

import pytest

from common.errors import PelaBenchError
from methods import create_method
from methods.base import check_option_types
from methods.pela import PelaOptions


@pytest.mark.parametrize("method,options,message", [
    ("pela", {"alpha": "abc"}, "option alpha='abc': pela expects a number"),  # string for float
    ("pela", {"beta": True}, "option beta=True: pela expects a number"),  # bool for float
    ("pela", {"epsilon": [1e-3]}, "option epsilon=[0.001]: pela expects a number"),  # list for float
    ("pela", {"ratio": "2"}, "option ratio='2': pela expects a number or null"),
    ("pela", {"rwp_form": 1}, "option rwp_form=1: pela expects a string"),  # number for string
    ("pela_no_fd", {"beta": "x"}, "option beta='x': pela_no_fd expects a number"),  # a variant names itself
    ("svd", {"keep_full_rank": "head*"}, "option keep_full_rank='head*': svd expects a list of strings or null"),
    ("svd", {"keep_full_rank": ["head*", 3]}, "option keep_full_rank=['head*', 3]: svd expects a list of strings"),
    ("tome", {"r": "5"}, "option r='5': tome expects an integer or a list of integers or null"),
    ("tome", {"r": 2.5}, "option r=2.5: tome expects an integer"),  # float for int
    ("tome", {"r": True}, "option r=True: tome expects an integer"),  # bool for int
    ("tome", {"r": [1, "2"]}, "option r=[1, '2']: tome expects an integer or a list of integers"),
    ("tome", {"proportional_attention": "yes"}, "option proportional_attention='yes': tome expects true or false"),
    ("tome", {"proportional_attention": 1}, "option proportional_attention=1: tome expects true or false"),
    ("lora", {"rank": 2.5}, "option rank=2.5: lora expects an integer"),
    ("lora", {"rank": "4"}, "option rank='4': lora expects an integer"),
    ("lora", {"lora_alpha": "16"}, "option lora_alpha='16': lora expects a number"),
    ("pc_lora", {"schedule": ["sine"]}, "option schedule=['sine']: pc_lora expects a string"),  # list for string
    ("pc_lora", {"rank": 8.0}, "option rank=8.0: pc_lora expects an integer or null"),
    ("tinybert", {"temperature": "hot"}, "option temperature='hot': tinybert expects a number"),
    ("maskalign", {"mask_ratio": "0.5"}, "option mask_ratio='0.5': maskalign expects a number"),
])
def test_bad_values_are_refused_naming_the_option(method, options, message):
    with pytest.raises(PelaBenchError) as err:
        create_method(method, **options)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("method,options", [
    ("pela", {"alpha": 1, "beta": 0, "epsilon": 0}),  # an integer is a fine number
    ("pela", {"ratio": 2}),
    ("pela", {"ratio": 1.5, "rwp_form": "linear"}),
    ("pela", {"ratio": None, "keep_full_rank": None}),  # null: the preset
    ("svd", {"keep_full_rank": ["head*", "norm"]}),
    ("svd", {"keep_full_rank": ("head*",)}),
    ("svd", {"keep_full_rank": []}),
    ("tome", {"r": 3}),
    ("tome", {"r": [0, 8, 0, 8, 0, 0]}),
    ("tome", {"r": None, "proportional_attention": False}),
    ("lora", {"rank": 4, "lora_alpha": 8, "lora_dropout": 0, "train_head": False}),
    ("pc_lora", {"rank": 8, "decay_fraction": 1, "schedule": "cosine"}),
    ("pc_lora", {"rank": None}),
    ("tinybert", {"temperature": 2, "intermediate_fraction": 0}),
    ("maskalign", {"mask_ratio": 0, "base_weight": 0}),
])
def test_good_values_pass(method, options):
    m = create_method(method, **options)
    for key, value in options.items():
        if value is not None:
            got = getattr(m.options, key)
            assert got == (list(value) if isinstance(value, tuple) else value), key


def test_check_option_types_directly():
    check_option_types("pela", PelaOptions, {"alpha": 2, "keep_full_rank": ["head"], "rwp_form": "linear"})
    with pytest.raises(PelaBenchError, match=re.escape("option alpha=False: pela expects a number")):
        check_option_types("pela", PelaOptions, {"alpha": False})
    check_option_types("pela", PelaOptions, {"not_an_option": object()})  # unknown keys are create_method's job


def test_unknown_options_are_refused_before_types():
    with pytest.raises(PelaBenchError, match="has no option"):
        create_method("pela", gamma="abc")


@pytest.mark.parametrize("method,options,label", [
    ("pela", {}, ""),
    ("pela", {"ratio": 2.0}, "ratio=2.0"),
    ("pela", {"beta": 1.0}, "beta=1.0"),  # set: it overrides the recipe's beta (0 on a ViT, officially)
    ("pela", {"recipe": "paper"}, ""),  # the recipe is a row field and a column of its own
    ("pela", {"ratio": 2.0, "alpha": 0.5}, "alpha=0.5 ratio=2.0"),  # sorted by name
    ("pela", {"ratio": 2}, "ratio=2.0"),  # an integer for a float option is the same setting
    ("lora", {"train_head": False}, "train_head=false"),  # JSON, as --set reads it
    ("tome", {"r": [1, 2, 3, 4, 5, 6]}, "r=[1,2,3,4,5,6]"),
    ("pela", {"rwp_form": "linear"}, 'rwp_form="linear"'),
    ("pela", {"keep_full_rank": ["head*", "norm"]}, 'keep_full_rank=["head*","norm"]'),
    ("pela_no_fd", {}, ""),  # a variant's pinned option is its default
    ("pela_no_fd", {"beta": 0.5}, "beta=0.5"),
    ("svd_ft", {}, ""),
    ("pc_lora_aggressive", {}, ""),
    ("pc_lora_aggressive", {"ratio": 4.0}, "ratio=4.0"),
    ("tome", {"r": 3}, "r=3"),
    ("lora", {"rank": 16}, ""),
    ("lora", {"rank": 4}, "rank=4"),
    ("maskalign", {"mask_ratio": 0.5}, "mask_ratio=0.5"),
    ("dense", {"ratio": 2.0}, ""),  # the teacher is the same model at any ratio
])
def test_options_label(method, options, label):
    assert create_method(method, **options).options_label() == label


def test_integer_and_float_spellings_are_one_stage():
    a, b = create_method("pela", ratio=2, alpha=1), create_method("pela", ratio=2.0, alpha=1.0)
    assert a.describe() == b.describe() and isinstance(a.options.ratio, float)
