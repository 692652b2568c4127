import pytest
import torch
from torch.utils.data import DataLoader

from backbones import create_backbone
from common.errors import PelaBenchError
from tasks import create_task
from tasks.synthetic import write_classification


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_classification(tmp_path_factory.mktemp("d") / "syn", n_train=32, n_val=16, progress=False)


def test_datasets_read_the_image_folder(root):
    data = create_task("cls").datasets(root, 64)
    assert data.provenance == "synthetic" and len(data.classes) == 16
    x, y = data.train[0]
    assert x.shape == (3, 64, 64) and 0 <= y < 16
    assert len(data.val) == 16


def test_evaluate_reports_top1_top5(root):
    task = create_task("classification")
    data = task.datasets(root, 64)
    model = task.build_model(create_backbone("deit_micro", num_classes=3), len(data.classes))
    assert model.info.num_classes == 16
    m = task.evaluate(model, DataLoader(data.val, batch_size=8))
    assert set(m) == {"top1", "top5"} and 0 <= m["top1"] <= m["top5"] <= 100


def test_perfect_model_scores_100(root):
    task = create_task("cls")
    data = task.datasets(root, 64)
    labels = torch.tensor([y for _, y in data.val])

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.i = 0

        def forward(self, x):
            out = torch.nn.functional.one_hot(labels[self.i:self.i + len(x)], 16).float()
            self.i += len(x)
            return out

    assert task.evaluate(Oracle(), DataLoader(data.val, batch_size=5))["top1"] == 100.0


def test_corrupt_image_is_named(root, tmp_path):
    import shutil

    bad_root = tmp_path / "bad"
    shutil.copytree(root, bad_root)
    victim = next((bad_root / "val").rglob("*.png"))
    victim.write_bytes(b"\x89PNG garbage")
    data = create_task("cls").datasets(bad_root, 64)
    with pytest.raises(PelaBenchError, match=victim.name):
        for _ in DataLoader(data.val, batch_size=16):
            pass


def test_missing_root_and_split(tmp_path):
    with pytest.raises(PelaBenchError, match="data root not found"):
        create_task("cls").datasets(tmp_path / "none", 64)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(PelaBenchError, match="val"):
        create_task("cls").datasets(tmp_path, 64)


def test_unknown_and_planned_tasks():
    with pytest.raises(PelaBenchError, match="not implemented yet"):
        create_task("vqa")
    with pytest.raises(PelaBenchError, match="unknown task"):
        create_task("dance")
