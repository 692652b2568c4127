"""The training loop: dict batches, a deterministic sample order, and resume-after-kill that
ends with exactly the weights of an uninterrupted run."""

import logging
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from benchmark.trainer import (
    Checkpointing,
    EpochSampler,
    OptimConfig,
    SeededSamples,
    cosine_with_warmup,
    move_to,
    train,
)
from common.errors import PelaBenchError

N_SAMPLES, BATCH, EPOCHS = 24, 4, 2  # 6 steps per epoch, 12 in all
TOTAL = N_SAMPLES // BATCH * EPOCHS
CFG = OptimConfig(epochs=EPOCHS, lr=1e-2, weight_decay=0.05, warmup_epochs=0.5)


class NoisySamples(Dataset):
    """Dict samples, nested, with augmentation drawn from the global torch RNG at load time."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(N_SAMPLES, 8, generator=g)
        self.y = torch.randint(0, 3, (N_SAMPLES,), generator=g)

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, index: int) -> dict:
        noise = 0.5 * torch.randn(8)  # the augmentation: differs per (epoch, index), same on every run
        return {"input": {"x": self.x[index] + noise, "extra": [torch.ones(2)]}, "label": self.y[index]}


class Setup:
    """A model with dropout and a loss with randomness of its own (a method's generator)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.gen = torch.Generator().manual_seed(1)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        assert batch["input"]["extra"][0].shape == (BATCH, 2)  # nested containers collated and moved
        ce = F.cross_entropy(self.model(batch["input"]["x"]), batch["label"])
        scale = 1 + torch.rand((), generator=self.gen)  # the method's own random stream
        reg = sum(p.square().sum() for p in self.model.parameters()) * 1e-3 * scale
        return {"loss": ce + reg, "ce": ce.detach(), "reg": reg.detach()}

    def checkpointing(self, path, every_steps: int) -> Checkpointing:
        return Checkpointing(path, every_steps=every_steps, every_seconds=0,
                             extra_state=(lambda: {"gen": self.gen.get_state()},
                                          lambda s: self.gen.set_state(s["gen"])))

    def train(self, *, workers: int = 0, on_step=None, checkpoint: Checkpointing | None = None) -> list[dict]:
        return train(self.model.parameters(), self.loss, NoisySamples(), CFG, batch_size=BATCH, seed=7,
                     workers=workers, modules=[self.model], desc="toy", progress=False, on_step=on_step,
                     checkpoint=checkpoint)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


def _scramble_global_rng() -> None:
    """What a fresh process looks like: none of the killed run's random state survives."""
    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)


class Killed(Exception):
    pass


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(single_thread):
    setup = Setup()
    history = setup.train()
    return setup.state(), history


def test_resumed_run_ends_with_the_uninterrupted_weights(uninterrupted, tmp_path, caplog, single_thread):
    reference, reference_history = uninterrupted
    assert len(reference_history) == EPOCHS and set(reference_history[0]) == {"loss", "ce", "reg"}
    path = tmp_path / "ckpt.pt"
    seen = []

    def die_at_step_7(progress: float) -> None:
        step = round(progress * TOTAL)
        seen.append(step)
        if step == 7:  # 7 steps done: the last checkpoint (every 5) holds step 5, mid-epoch 0
            raise Killed

    setup = Setup()
    with pytest.raises(Killed):
        setup.train(on_step=die_at_step_7, checkpoint=setup.checkpointing(path, every_steps=5))
    assert seen == list(range(8)) and path.is_file()
    assert torch.load(path, weights_only=True)["step"] == 5
    killed_state = setup.state()

    _scramble_global_rng()
    resumed = Setup()  # a fresh process: the same construction, then the checkpoint
    resumed.gen.manual_seed(999)  # the method's generator must come back from the checkpoint too
    steps = []
    with caplog.at_level(logging.INFO, logger="pela_bench"):
        history = resumed.train(on_step=lambda p: steps.append(round(p * TOTAL)),
                                checkpoint=resumed.checkpointing(path, every_steps=5))
    assert "toy: resuming from step 5 of 12" in caplog.text
    assert steps == list(range(5, TOTAL))  # nothing before the checkpoint runs again
    _assert_same(resumed.state(), reference)
    assert history == reference_history  # the loss history survives the interruption too
    assert any(not torch.equal(killed_state[k], reference[k]) for k in reference)  # the kill did stop it early


def _train_until_killed(path, at_step: int, every: int) -> None:
    """A run that checkpoints every `every` steps and is killed after `at_step` steps."""

    def die(progress: float) -> None:
        if round(progress * TOTAL) == at_step:
            raise Killed

    with pytest.raises(Killed):
        Setup().train(on_step=die, checkpoint=Checkpointing(path, every_steps=every, every_seconds=0))


def test_without_its_extra_state_a_resume_differs(uninterrupted, tmp_path, single_thread):
    """Guards the test above: the method's own random stream does shape the weights."""
    reference, _ = uninterrupted
    path = tmp_path / "ckpt.pt"

    _train_until_killed(path, at_step=7, every=5)
    resumed = Setup()
    resumed.gen.manual_seed(999)
    resumed.train(checkpoint=Checkpointing(path, every_steps=5, every_seconds=0))
    assert any(not torch.equal(resumed.state()[k], reference[k]) for k in reference)


def test_loader_workers_do_not_change_the_result(uninterrupted, single_thread):
    reference, reference_history = uninterrupted
    setup = Setup()
    history = setup.train(workers=1)
    _assert_same(setup.state(), reference)
    assert history == reference_history


def test_same_seed_same_weights_other_seed_other_weights(uninterrupted, single_thread):
    reference, _ = uninterrupted
    again = Setup()
    again.train()
    _assert_same(again.state(), reference)

    other = Setup()
    train(other.model.parameters(), other.loss, NoisySamples(), CFG, batch_size=BATCH, seed=8,
          modules=[other.model], progress=False)
    assert any(not torch.equal(other.state()[k], reference[k]) for k in reference)


def test_checkpoint_of_another_run_is_refused(tmp_path, single_thread):
    path = tmp_path / "ckpt.pt"

    _train_until_killed(path, at_step=3, every=2)
    other = Setup()
    longer = OptimConfig(epochs=3, lr=1e-2)
    with pytest.raises(PelaBenchError, match="saved by a different run"):
        train(other.model.parameters(), other.loss, NoisySamples(), longer, batch_size=BATCH, seed=7,
              modules=[other.model], progress=False, checkpoint=Checkpointing(path, every_steps=2, every_seconds=0))


def test_fewer_samples_than_a_batch_is_an_error_naming_the_run():
    model = nn.Linear(8, 3)
    with pytest.raises(PelaBenchError, match="teacher x: the training split holds 24 samples, fewer than one batch"):
        train(model.parameters(), lambda b: {"loss": model(b["input"]["x"]).sum()}, NoisySamples(), CFG,
              batch_size=32, seed=0, desc="teacher x", progress=False)


def test_epoch_sampler_order_depends_on_seed_and_epoch_and_resumes_mid_epoch():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in first} == {0}
    assert len(sampler) == 10
    torch.manual_seed(0)
    state = torch.get_rng_state()
    sampler.set_epoch(0)
    assert list(sampler) == first  # the same order, and the global stream untouched
    assert torch.equal(torch.get_rng_state(), state)
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for _, i in second] != [i for _, i in first] and {e for e, _ in second} == {1}
    sampler.set_epoch(1, start=4)
    assert list(sampler) == second[4:] and len(sampler) == 6
    other = EpochSampler(10, seed=4)
    assert list(other) != first


def test_seeded_samples_depend_only_on_epoch_and_index():
    samples = SeededSamples(NoisySamples(), seed=7)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = samples[(0, 3)]["input"]["x"]
    assert torch.equal(torch.get_rng_state(), state)  # loading leaves the training loop's stream alone
    samples[(0, 5)]
    assert torch.equal(samples[(0, 3)]["input"]["x"], a)  # whatever was loaded before
    assert not torch.equal(samples[(1, 3)]["input"]["x"], a)  # a new epoch, a new augmentation
    assert len(samples) == N_SAMPLES


def test_move_to_handles_nested_containers():
    batch = {"image": torch.zeros(2, 3), "meta": {"ids": [torch.ones(2), torch.arange(2)], "name": "x"},
             "pair": (torch.zeros(1), 3), "n": 5}
    moved = move_to(batch, torch.device("meta"))
    assert moved["image"].device.type == "meta"
    assert [t.device.type for t in moved["meta"]["ids"]] == ["meta", "meta"]
    assert isinstance(moved["meta"]["ids"], list) and isinstance(moved["pair"], tuple)
    assert moved["pair"][0].device.type == "meta" and moved["pair"][1] == 3
    assert moved["meta"]["name"] == "x" and moved["n"] == 5
    assert batch["image"].device.type == "cpu"  # the input is not modified
    assert move_to(torch.ones(1), "cpu").device.type == "cpu"


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 100, 10, 0.01) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10, 0.01) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10, 0.01) == pytest.approx(0.01)
    mids = [cosine_with_warmup(s, 100, 10, 0.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(mids, mids[1:]))
