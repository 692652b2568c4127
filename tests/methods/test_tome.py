import pytest
import torch

from backbones import create_backbone
from benchmark.efficiency import count_flops
from common.errors import PelaBenchError
from common.params import count_params
from methods import create_method
from methods.tome import ToMeState, bipartite_soft_matching, default_r


def _random_head(b):
    torch.nn.init.normal_(b.model.head.weight, std=0.5)  # jax init zeroes the head
    return b.eval()


@pytest.mark.parametrize("name,overrides", [
    ("deit_micro", {}),
    ("deit_micro", {"global_pool": "token"}),
    ("deit_micro", {"init_values": 0.1}),  # LayerScale, as in DeiT-III
])
def test_r0_is_exactly_the_plain_model(name, overrides):
    torch.manual_seed(0)
    teacher = _random_head(create_backbone(name, **overrides))
    x = torch.randn(2, 3, 64, 64)
    student = create_method("tome", r=0).build_student(teacher).eval()
    with student.capture_features() as feats:
        logits = student(x)
    with teacher.capture_features() as ref_feats:
        ref_logits = teacher(x)
    assert torch.equal(logits, ref_logits)
    assert len(feats["blocks"]) == len(ref_feats["blocks"]) == 6
    assert all(torch.equal(a, b) for a, b in zip(feats["blocks"], ref_feats["blocks"]))


def test_merging_removes_tokens_and_flops():
    torch.manual_seed(0)
    teacher = _random_head(create_backbone("deit_micro"))
    student = create_method("tome", r=4).build_student(teacher).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens = student.features({"image": x})["blocks"]
    assert [t.shape[1] for t in tokens] == [61, 57, 53, 49, 45, 41]
    assert student.token_encoder() is student.model
    assert student.model.tome.size[:, :, 0].sum(1).tolist() == [65.0, 65.0]  # every patch accounted for
    assert student.model.tome.size[:, 0, 0].tolist() == [1.0, 1.0]  # class token never merged
    assert count_params(student) == count_params(teacher)
    assert count_flops(student, (1, 3, 64, 64))["flops"] < 0.85 * count_flops(teacher, (1, 3, 64, 64))["flops"]
    assert not torch.equal(student(x), teacher(x))


def test_per_layer_r_and_default_r():
    teacher = create_backbone("deit_micro").eval()
    student = create_method("tome", r=[0, 8, 0, 8, 0, 0]).build_student(teacher)
    student(torch.randn(1, 3, 64, 64))
    assert student.model.tome.tokens_per_layer == [65, 57, 57, 49, 49, 49]
    assert default_r(teacher.model) == 5
    with pytest.raises(PelaBenchError, match="6 of them"):
        create_method("tome", r=[1, 2]).build_student(teacher)


def test_matching_merges_the_most_similar_pairs():
    # tokens 0 (protected), 1..5; token 2 (A) duplicates token 3 (B), token 4 (A) is near token 5 (B)
    base = torch.eye(6)
    metric = base.clone()
    metric[2] = base[3]
    metric[4] = base[5] + 0.1 * base[4]
    step = bipartite_soft_matching(metric[None], r=1)
    assert step.src_idx.tolist() == [[1]] and step.dst_idx.tolist() == [[1]]  # A[1]=token 2 -> B[1]=token 3
    assert step.keep_idx.tolist() == [[0, 2]]


def test_size_weighted_average_and_unmerge():
    state = ToMeState(r=[1])
    x = torch.arange(6.0).reshape(1, 6, 1).repeat(1, 1, 2)
    metric = torch.eye(6)[None]
    metric[0, 2] = metric[0, 3]
    merged = state.merge(x, metric)
    assert merged.shape[1] == 5
    # tokens 2 and 3 became one token worth (2 + 3) / 2 with size 2
    assert torch.allclose(merged[0, :, 0], torch.tensor([0.0, 4.0, 1.0, 2.5, 5.0]))
    assert state.size[0, :, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 1.0]
    back = state.unmerge(merged)
    assert back.shape == x.shape and torch.allclose(back[0, :, 0], torch.tensor([0.0, 1.0, 2.5, 2.5, 4.0, 5.0]))


def test_deit_base_flops_halve_at_the_reference_r():
    with torch.device("meta"):
        teacher = create_backbone("deit_base")
    student = create_method("tome", r=16).build_student(teacher)
    dense = count_flops(teacher, (1, 3, 224, 224))["flops"]
    merged = count_flops(student, (1, 3, 224, 224))["flops"]
    assert merged / dense == pytest.approx(0.5, abs=0.03)  # paper: 16.5 of 33.7 GFLOPs


def test_swin_is_refused_with_one_line(swin_teacher):
    from benchmark.config import SuiteConfig, validate

    with pytest.raises(PelaBenchError, match="tome does not apply to swin_micro"):
        validate(SuiteConfig(backbone="swin_micro", methods=("dense", "tome")))
    with pytest.raises(PelaBenchError, match="tome does not apply to swin_micro"):
        create_method("tome").build_student(swin_teacher)
    with pytest.raises(PelaBenchError, match="no compression ratio"):
        create_method("tome", ratio=2.0)


def test_tome_lacks_a_pyramid_and_says_why():
    tome = create_method("tome")
    reason = tome.unsupported(("pyramid",))
    assert isinstance(reason, str) and "dense head" in reason
    assert tome.unsupported(()) is None and tome.unsupported(("something_else",)) is None
    assert tome.unsupported(("something_else", "pyramid")) == reason
    assert not hasattr(type(tome), "dense_unsupported")
