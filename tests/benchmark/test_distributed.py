"""Distributed training equals one process: two gloo processes under torchrun against a single one.

The 2-process run takes 8 samples per process and step, the single one 16, so both
see the same global batch of the same samples (`EpochSampler` deals every other
position of one order to each rank). Tolerance: the whole model's weights differ
by at most 1e-4 in relative L2 norm (float summation order; the measured figure is
2e-5 for PELA's student, 6e-8 for the teacher) and the rows' metrics are equal.
Sharded evaluation is exact: the same weights give the same metric and bitwise the
same features on one process and on two.
"""

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from benchmark.trainer import EpochSampler, Layout, OptimConfig, train
from common import distributed
from common.errors import PelaBenchError

SCRIPT = Path(__file__).with_name("ddp_script.py")
ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(cmd: list[str], tmp: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _run([sys.executable, str(SCRIPT), "suite", str(tmp / "one/runs"), str(tmp / "one/results")], tmp)
    _run([*TORCHRUN, str(SCRIPT), "suite", str(tmp / "two/runs"), str(tmp / "two/results")], tmp)
    return tmp


def _flat(path: str) -> torch.Tensor:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return torch.cat([v.flatten().float() for _, v in sorted(state.items()) if v.is_floating_point()])


def _rows(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "results/results.jsonl").read_text().splitlines()]
    assert len(rows) == len({r["method"] for r in rows}), "a row was written twice"
    return {r["method"]: r for r in rows}


def test_two_gloo_processes_train_the_weights_and_rows_of_one_at_twice_the_batch(runs):
    for stage in ("teachers/*", "students/deit_micro/pela-*", "students/deit_micro/pc_lora-*"):
        (one,), (two,) = (glob.glob(str(runs / run / "runs" / stage / "model.pt")) for run in ("one", "two"))
        assert Path(one).parent.name == Path(two).parent.name  # the same stage hash: the layout is not hashed
        a, b = _flat(one), _flat(two)
        assert ((a - b).norm() / a.norm()).item() < 1e-4, stage
        assert not list(Path(two).parent.glob("checkpoint.pt"))  # removed once the stage was marked finished
    one, two = _rows(runs / "one"), _rows(runs / "two")
    assert set(one) == set(two) == {"dense", "pela", "pc_lora"}  # PC-LoRA's fading weights trained under DDP
    for method in one:
        assert one[method]["metrics"] == two[method]["metrics"]
        assert one[method]["config_hash"] == two[method]["config_hash"]
        for term, value in one[method]["loss_terms"].items():
            assert two[method]["loss_terms"][term] == pytest.approx(value, rel=1e-5)  # averaged over ranks
        assert one[method]["layout"]["world_size"] == 1 and two[method]["layout"]["world_size"] == 2
        assert one[method]["layout"]["micro_batch"] == 16 and two[method]["layout"]["micro_batch"] == 8
    assert one["pela"]["global_batch"] == two["pela"]["global_batch"] == 16
    # Rank 0 alone wrote: one file per row, no temporary file left.
    assert len(list((runs / "two/results/rows").glob("*.json"))) == 3
    assert not list((runs / "two/results/rows").glob(".*"))


def test_sharded_evaluation_gives_exactly_the_single_process_metric_and_features(runs, tmp_path):
    weights = glob.glob(str(runs / "one/runs/students/deit_micro/pela-*/model.pt"))[0]
    data = glob.glob(str(runs / "one/runs/data/synthetic-cls-*"))[0]
    _run([sys.executable, str(SCRIPT), "eval", weights, str(tmp_path / "one.json"), data], tmp_path)
    _run([*TORCHRUN, str(SCRIPT), "eval", weights, str(tmp_path / "two.json"), data], tmp_path)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["world"], two["world"]) == (1, 2)
    assert one["n"] == two["n"] == 16  # 16 images in batches of 5: ranks hold 3 and 1 of the 4 batches
    assert one["metrics"] == two["metrics"]
    assert one["features"] == two["features"]


def test_the_sampler_deals_each_global_batch_to_the_ranks_whatever_their_number():
    single = list(EpochSampler(23, seed=3))
    for world in (2, 4):
        ranks = [EpochSampler(23, seed=3, rank=r, world=world) for r in range(world)]
        for s in ranks:
            s.set_epoch(0, start=8)  # resumed two global batches of 4 in
        streams = [list(s) for s in ranks]
        assert sum(len(s) for s in streams) == 23 - 8 == sum(len(s) for s in ranks)
        interleaved = [streams[i % world][i // world] for i in range(15)]
        assert interleaved == single[8:]


def test_one_process_helpers_are_identities_and_batches_shard_in_order():
    assert distributed.world().size == 1 and distributed.is_main()
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.gather(3) == [3]
    assert distributed.shard_batches(11, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert distributed.gather_batches(["x", "y"]) == ["x", "y"]
    assert distributed.main_only(lambda: 5) == 5


def test_layout_splits_the_global_batch_into_micro_batches_or_says_why_not():
    assert Layout().split(64, 1, "t") == (64, 1)
    assert Layout().split(64, 4, "t") == (16, 1)
    assert Layout(micro_batch=8).split(64, 2, "t") == (8, 4)
    assert Layout(micro_batch=10).split(64, 2, "t") == (8, 4)  # the largest divisor within the cap
    with pytest.raises(PelaBenchError, match="does not split over 3 processes"):
        Layout().split(64, 3, "pre-training")


class _Samples(Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def _fit(layout: Layout = Layout(), batch: int = 16) -> tuple[torch.Tensor, list[dict[str, float]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    history = train(model.parameters(), lambda b: {"loss": F.cross_entropy(model(b["x"]), b["y"])}, _Samples(),
                    OptimConfig(epochs=2, lr=1e-2, warmup_epochs=0), batch_size=batch, seed=0, modules=[model],
                    progress=False, layout=layout)
    return torch.cat([p.detach().flatten() for p in model.parameters()]), history


def test_gradient_accumulation_reaches_the_weights_of_the_whole_batch():
    whole, h_whole = _fit()
    accumulated, h_acc = _fit(Layout(micro_batch=4))  # 4 micro-batches of 4 per step
    assert ((whole - accumulated).norm() / whole.norm()).item() < 1e-5
    assert h_acc[-1]["loss"] == pytest.approx(h_whole[-1]["loss"], rel=1e-5)
    halved, _ = _fit(batch=8)
    assert ((whole - halved).norm() / whole.norm()).item() > 1e-3  # the tolerance tells a wrong batch apart


@pytest.mark.slow
def test_compiled_training_reaches_the_eager_weights():
    """`--compile` (about 20 s of compilation on this CPU for the toy model; hence slow)."""
    eager, _ = _fit()
    compiled, _ = _fit(Layout(compile=True))
    assert ((eager - compiled).norm() / eager.norm()).item() < 1e-5
