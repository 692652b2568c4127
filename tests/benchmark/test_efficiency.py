import pytest
import torch
from torch import nn

from backbones import create_backbone
from benchmark.efficiency import count_flops, measure_all, measure_latency, measure_peak_memory
from common.errors import PelaBenchError
from methods import create_method


@pytest.fixture(scope="module")
def deit_base_meta():
    # FLOPs depend on shapes only: a meta-device DeiT-B builds in ~0.1 s instead of
    # seconds, and factorising it skips the SVDs (LowRankLinear.from_linear keeps meta
    # layers empty) while building exactly the PELA architecture.
    with torch.device("meta"):
        return create_backbone("deit_base").eval()


def test_deit_base_flops_include_attention(deit_base_meta):
    # timm's 17.56 GMAC for ViT-B/16: 35.1 GFLOPs (the paper's 33.7 misses fused attention)
    f = count_flops(deit_base_meta, (1, 3, 224, 224))
    assert f["flops"] == pytest.approx(35.1e9, rel=0.01)
    assert f["macs"] * 2 == f["flops"]


def test_pela_deit_base_flops(deit_base_meta):
    student = create_method("pela").build_student(deit_base_meta)
    # Linear layers halve (the paper's 17.0 G counts only those); the attention
    # matmuls, 2 x 12 blocks x 2 x 197^2 x 768 MAC = 1.43 GFLOPs, stay: 18.39 G.
    assert count_flops(student, (1, 3, 224, 224))["flops"] == pytest.approx(18.39e9, rel=0.02)


def test_counting_leaves_the_model_alone_and_matches_a_meta_build():
    torch.manual_seed(0)
    model = create_backbone("deit_micro")
    params = dict(model.named_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = count_flops(model, (1, 3, 64, 64))
    after = model.state_dict()
    assert dict(model.named_parameters()).keys() == params.keys()
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(after[k].device.type == "cpu" and torch.equal(before[k], after[k]) for k in before)
    with torch.device("meta"):
        meta = create_backbone("deit_micro")
    assert flops == count_flops(meta, (1, 3, 64, 64))


def test_factorised_model_costs_fewer_flops():
    torch.manual_seed(0)
    dense = create_backbone("deit_micro")
    student = create_method("svd").build_student(dense)
    shape = (1, 3, 64, 64)
    assert count_flops(student, shape)["flops"] < count_flops(dense, shape)["flops"]


def test_latency_is_sane_and_restores_threads():
    before = torch.get_num_threads()
    lat = measure_latency(create_backbone("deit_micro"), (2, 3, 64, 64), repeats=5, warmup=1, threads=1)
    assert torch.get_num_threads() == before
    assert 0 < lat["median_ms"] <= lat["p90_ms"]
    assert lat["ms_per_img"] == pytest.approx(lat["median_ms"] / 2)
    assert lat["threads"] == 1 and lat["batch_size"] == 2 and lat["device"] == "cpu"


def test_latency_rejects_zero_repeats():
    with pytest.raises(PelaBenchError, match="repeats"):
        measure_latency(nn.Identity(), (1, 3), repeats=0)


def test_peak_memory_counts_params_and_grows_with_batch():
    model = create_backbone("deit_micro")
    small = measure_peak_memory(model, (1, 3, 64, 64))
    big = measure_peak_memory(model, (16, 3, 64, 64))
    assert small["method"] == "dispatch_tracking"
    assert small["param_bytes"] == big["param_bytes"] > 0
    assert small["peak_bytes"] == small["param_bytes"] + small["activation_peak_bytes"]
    assert small["peak_bytes"] > small["param_bytes"]
    assert big["activation_peak_bytes"] > 4 * small["activation_peak_bytes"]


class _Chain(nn.Module):
    """Ten 1 MiB temporaries in a row, each dead before the next, and a view of a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(512, 512))  # 1 MiB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(10):
            x = x * 1.0
        return x + self.weight.t()


def test_cpu_peak_follows_frees_and_ignores_parameter_views():
    mib = 2**20
    mem = measure_peak_memory(_Chain(), (512, 512))
    # at most the previous and the next temporary alive at once: 2 MiB, not 11
    assert mem["activation_peak_bytes"] == 2 * mib
    assert mem["param_bytes"] == mib


def test_measure_all_row_fields():
    row = measure_all(create_backbone("deit_micro"), (1, 3, 64, 64), latency_repeats=2, threads=1)
    for key in ("params_m", "gflops", "gmacs", "latency_ms", "latency_ms_per_img", "peak_mem_mb",
                "latency_batch", "latency_threads"):
        assert row[key] > 0
    assert row["gflops"] == pytest.approx(2 * row["gmacs"])


class _KeywordModel(nn.Module):
    """A forward of keyword inputs, as a task's example inputs give them."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = create_backbone("deit_micro")
        self.text = nn.Embedding(10, 8)

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone(image).sum(1) + self.text(text_ids).sum((1, 2))


def test_measure_all_takes_a_shape_keyword_inputs_or_a_function_of_the_batch():
    from common.params import count_params

    torch.manual_seed(0)
    model = _KeywordModel()
    calls = []

    def inputs(batch):
        calls.append(batch)
        return {"image": torch.randn(batch, 3, 64, 64), "text_ids": torch.zeros(batch, 4, dtype=torch.long)}

    by_fn = measure_all(model, inputs, latency_repeats=1, latency_warmup=0, threads=1, latency_batch=2)
    assert sorted(calls) == [1, 2]  # batch 1 for FLOPs, the latency batch for the timings
    assert by_fn["latency_batch"] == 2 and by_fn["latency_ms_per_img"] == pytest.approx(by_fn["latency_ms"] / 2)
    assert by_fn["params_m"] == pytest.approx(count_params(model) / 1e6)
    by_dict = measure_all(model, inputs(3), latency_repeats=1, latency_warmup=0, threads=1)
    assert by_dict["latency_batch"] == 3
    assert by_dict["gflops"] == by_fn["gflops"] > 0  # FLOPs per image, whatever the batch given
    backbone = measure_all(model.backbone, (2, 3, 64, 64), latency_repeats=1, latency_warmup=0, threads=1)
    assert backbone["gflops"] == pytest.approx(count_flops(model.backbone, (1, 3, 64, 64))["flops"] / 1e9)
    assert backbone["params_m"] < by_fn["params_m"]


def test_count_params_counts_shared_weights_once():
    from common.params import count_params

    lin = nn.Linear(4, 4)
    tied = nn.Sequential(lin, lin)
    assert count_params(tied) == count_params(lin) == 20


def test_train_step_times_a_whole_step_and_counts_weights_moments_and_activations():
    from benchmark.efficiency import measure_train_step

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))
    x, y = torch.randn(16, 32), torch.randint(0, 4, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    cost = measure_train_step(model, lambda m: nn.functional.cross_entropy(m(x), y), batch_size=16, repeats=3)
    assert cost["train_step_ms"] > 0 and cost["train_ms_per_img"] == pytest.approx(cost["train_step_ms"] / 16)
    assert cost["train_batch"] == 16 and cost["train_step_repeats"] == 3
    assert cost["train_mem_method"] == "dispatch_tracking"
    weights = sum(p.numel() for p in model.parameters()) * 4
    # weights + AdamW's two moments, plus at least the gradients and the hidden activation
    assert cost["train_peak_mb"] * 2**20 >= 3 * weights + weights + 16 * 256 * 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the optimiser stepped
    with pytest.raises(PelaBenchError, match="repeats"):
        measure_train_step(model, lambda m: m(x).sum(), batch_size=16, repeats=0)
