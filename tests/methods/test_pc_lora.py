import pytest
import torch

from backbones import create_backbone
from benchmark.trainer import OptimConfig, train
from common.errors import PelaBenchError
from common.params import count_params
from methods import LowRankLinear, create_method, lowrank_modules
from methods.pc_lora import decay, pc_lora_layers
from tasks.classification import CrossEntropy


@pytest.mark.parametrize("schedule", ["sine", "linear", "cosine"])
def test_lambda_decays_from_one_to_zero_by_q(schedule):
    q = 0.6
    values = [decay(p / 100, q, schedule) for p in range(101)]
    assert values[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[60] == pytest.approx(0.0, abs=1e-12) and all(v == 0 for v in values[61:])
    assert 0 < values[30] < 1


def test_schedules_differ_and_unknown_one_is_refused():
    assert decay(0.25, 1.0, "sine") != decay(0.25, 1.0, "linear")
    with pytest.raises(PelaBenchError, match="schedule"):
        create_method("pc_lora", schedule="cubic")


def test_starts_as_the_teacher_with_pela_ranks(teacher):
    student = create_method("pc_lora").build_student(teacher).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(student(x), teacher(x), atol=1e-6)  # lambda=1, B=0, c=b
    pela = create_method("pela").build_student(teacher)
    ranks = {n: m.rank for n, m in pc_lora_layers(student).items()}
    assert ranks == {n: m.rank for n, m in lowrank_modules(pela).items()}


def test_loss_is_the_task_weighted_mix_of_base_and_distillation(teacher, make_batch, objective):
    method = create_method("pc_lora", task_weight=0.3)
    student = method.build_student(teacher)
    batch = make_batch(2)
    method.on_step(student, 0.5)
    terms = method.loss(student, teacher, batch, objective)
    assert set(terms) == {"loss", "base", "fd", "lambda"} and terms["lambda"] == method.lam
    assert torch.isclose(terms["loss"], 0.3 * terms["base"] + 0.7 * terms["fd"])
    with torch.no_grad():
        logits = student(batch["image"])
    assert torch.isclose(terms["base"], objective.loss(logits, batch))


def test_training_drops_w_and_leaves_plain_lowrank_layers(teacher, make_batch):
    torch.manual_seed(0)
    method = create_method("pc_lora", decay_fraction=0.5)
    student = method.build_student(teacher)
    objective = CrossEntropy()
    samples = make_batch(8)
    data = [{"image": samples["image"][i], "label": samples["label"][i]} for i in range(8)]  # dict samples
    seen = []
    history = train(student.parameters(), lambda b: method.loss(student, teacher, b, objective), data,
                    OptimConfig(epochs=2, lr=1e-3, warmup_epochs=0), batch_size=4, seed=0, modules=[student],
                    progress=False, on_step=lambda p: (method.on_step(student, p), seen.append(method.lam)))
    assert len(seen) == 4 and len(history) == 2
    assert seen[0] == 1.0 and seen[-1] == 0.0 and {"base", "fd", "lambda"} <= set(history[0])
    # frozen W never trained
    layer = next(iter(pc_lora_layers(student).values()))
    assert not layer.frozen_weight.requires_grad
    method.on_step(student, 1.0)
    x = torch.randn(2, 3, 64, 64)
    before = student.eval()(x)
    final = method.finalize(student)
    assert not pc_lora_layers(final)
    assert all(type(m) is LowRankLinear for m in lowrank_modules(final).values())
    assert not any("frozen_weight" in k for k in final.state_dict())
    assert count_params(final) == count_params(create_method("pela").build_student(teacher))
    # the finalised layers compute what the adapters computed once lambda hit 0
    assert torch.allclose(final(x), before, atol=1e-6)


def test_finalize_refuses_while_w_still_counts(teacher):
    method = create_method("pc_lora")
    student = method.build_student(teacher)
    method.on_step(student, 0.1)
    with pytest.raises(RuntimeError, match="lambda is still"):
        method.finalize(student)


def test_aggressive_preset_uses_rank_32():
    with torch.device("meta"):
        t = create_backbone("deit_base")
    student = create_method("pc_lora_aggressive").build_student(t)
    layers = pc_lora_layers(student)
    assert layers and all(m.rank == 32 for m in layers.values())
    # after the decay only the adapters are left: most of ViT-B's weights are gone
    lowrank_params = sum(32 * (m.in_features + m.out_features) + m.out_features for m in layers.values())
    dense_linear = sum(m.in_features * m.out_features + m.out_features for m in layers.values())
    assert lowrank_params / dense_linear < 0.1
