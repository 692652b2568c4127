from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from backbones import create_backbone
from common.errors import PelaBenchError
from tasks import RunContext, TaskData, create_task
from tasks.classification import ClassificationTask, CrossEntropy, DictSamples, image_folder_datasets
from tasks.synthetic import write_classification

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_classification(tmp_path_factory.mktemp("d") / "syn", n_train=32, n_val=16, progress=False)


def test_datasets_read_the_image_folder(root):
    data = image_folder_datasets(root, 64)
    assert data.provenance == "synthetic" and len(data.classes) == 16 and data.img_size == 64
    x, y = data.train[0]
    assert x.shape == (3, 64, 64) and 0 <= y < 16
    assert len(data.val) == 16


def test_load_wraps_the_image_folder_in_task_data(root):
    task = create_task("cls")
    data = task.load(root, task.schedule("smoke"), 48)
    assert isinstance(data, TaskData) and data.root == Path(root) and data.provenance == "synthetic"
    assert data.content.img_size == 48 and len(data.content.classes) == 16
    assert data.content.val[0][0].shape == (3, 48, 48)
    assert task.input_size(task.schedule("smoke"), data) == 48
    # no size given: the ImageNet default
    assert task.load(root, task.schedule("smoke"), None).content.img_size == 224


def test_train_split_gives_dict_samples(root):
    task = create_task("cls")
    data = task.load(root, task.schedule("tiny"), 64)
    split = task.train_split(data)
    assert isinstance(split, DictSamples) and len(split) == 32
    sample = split[0]
    assert set(sample) == {"image", "label"} and sample["image"].shape == (3, 64, 64) and 0 <= sample["label"] < 16
    batch = next(iter(DataLoader(split, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["label"].shape == (4,)


def test_objective_is_cross_entropy_on_dict_batches(root):
    task = create_task("cls")
    objective = task.objective()
    assert isinstance(objective, CrossEntropy) and objective.name == "cross_entropy"
    torch.manual_seed(0)
    model = create_backbone("deit_micro", num_classes=16).eval()
    batch = {"image": torch.randn(3, 3, 64, 64), "label": torch.tensor([0, 5, 15])}
    out = objective.forward(model, batch)
    assert out.shape == (3, 16)
    expected = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
    assert torch.allclose(objective.loss(out, batch), expected)


def test_backbone_overrides_set_the_number_of_classes(root):
    task = create_task("classification")
    data = task.load(root, task.schedule("smoke"), 64)
    assert task.backbone_overrides(data) == {"num_classes": 16}
    model = create_backbone("deit_micro", **task.backbone_overrides(data))
    assert model.info.num_classes == 16


def test_evaluate_reports_top1_top5(root):
    task = create_task("classification")
    data = task.load(root, task.schedule("smoke"), 64)
    model = create_backbone("deit_micro", **task.backbone_overrides(data))
    m = task.evaluate(model, DataLoader(DictSamples(data.content.val), batch_size=8))
    assert set(m) == {"top1", "top5"} and 0 <= m["top1"] <= m["top5"] <= 100
    assert {metric.name for metric in task.metrics} == set(m) and task.primary_metric == "top1"


def test_run_evaluates_the_student_unchanged(root, tmp_path):
    task = create_task("cls")
    schedule = task.schedule("tiny")
    data = task.load(root, schedule, 64)
    torch.manual_seed(0)
    student = create_backbone("deit_micro", **task.backbone_overrides(data))
    res = task.run(student, data, schedule, RunContext(device=torch.device("cpu"), seed=0, work_dir=tmp_path,
                                                       workers=0, progress=False))
    assert res.model is student and set(res.metrics) == {"top1", "top5"}
    assert res.metrics == task.evaluate(student, DataLoader(DictSamples(data.content.val), batch_size=5))
    assert task.measured_module(res) is student
    inputs = task.example_inputs(data, schedule, student, 2)
    assert set(inputs) == {"image"} and inputs["image"].shape == (2, 3, 64, 64)
    assert torch.equal(inputs["image"], task.example_inputs(data, schedule, student, 2)["image"])  # fixed values
    assert not task.fine_tunes
    with pytest.raises(PelaBenchError, match="does not fine-tune"):
        task.train_step(student, data, schedule, 2, torch.device("cpu"))


def test_perfect_model_scores_100(root):
    task = create_task("cls")
    data = task.load(root, task.schedule("smoke"), 64)
    labels = torch.tensor([y for _, y in data.content.val])

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.i = 0

        def forward(self, x):
            out = torch.nn.functional.one_hot(labels[self.i:self.i + len(x)], 16).float()
            self.i += len(x)
            return out

    m = task.evaluate(Oracle(), DataLoader(DictSamples(data.content.val), batch_size=5))
    assert m["top1"] == 100.0 and m["top5"] == 100.0


def test_empty_evaluation_split_is_an_error():
    with pytest.raises(PelaBenchError, match="empty"):
        ClassificationTask().evaluate(torch.nn.Identity(), [])


def test_corrupt_image_is_named(root, tmp_path):
    import shutil

    from tasks.images import LabelledImages

    bad_root = tmp_path / "bad"
    shutil.copytree(root, bad_root)
    victim = next((bad_root / "val").rglob("*.png"))
    victim.write_bytes(b"\x89PNG garbage")
    task = create_task("cls")
    # A set small enough to hold is decoded as it loads, so the run stops before any training.
    with pytest.raises(PelaBenchError, match=victim.name):
        task.load(bad_root, task.schedule("smoke"), 64)
    # A set too large to hold is decoded per sample; the loader names the file.
    samples = sorted((str(p), 0) for p in (bad_root / "val").rglob("*.png"))
    lazy = LabelledImages(samples, lambda x: x.float(), in_memory=False)
    assert not lazy.images.in_memory
    with pytest.raises(PelaBenchError, match=victim.name):
        for _ in DataLoader(lazy, batch_size=16):
            pass


def test_small_sets_are_held_in_memory_and_read_as_from_disk(root, monkeypatch):
    from tasks import images
    from tasks.images import ImageFiles, load_rgb_tensor

    paths = sorted((root / "val").rglob("*.png"))
    held = ImageFiles(paths)
    assert held.in_memory and len(held) == len(paths)
    assert torch.equal(held[3], load_rgb_tensor(paths[3])) and held[3].dtype == torch.uint8
    monkeypatch.setattr(images, "MEMORY_LIMIT_BYTES", 3 * 64 * 64 * (len(paths) - 1))
    assert not ImageFiles(paths).in_memory  # one image over the limit: decoded per access
    assert torch.equal(ImageFiles(paths)[3], held[3])


def test_missing_root_and_split(tmp_path):
    task = create_task("cls")
    with pytest.raises(PelaBenchError, match="data root not found"):
        task.load(tmp_path / "none", task.schedule("smoke"), 64)
    with pytest.raises(PelaBenchError, match="data root not found"):
        image_folder_datasets(tmp_path / "none", 64)
    with pytest.raises(PelaBenchError, match="does not exist"):
        task.check_root(tmp_path / "none")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(PelaBenchError, match="val"):
        task.load(tmp_path, task.schedule("smoke"), 64)
    with pytest.raises(PelaBenchError, match="no 'val' folder"):
        task.check_root(tmp_path)


def test_schedules_per_budget():
    task = create_task("cls")
    assert {"tiny", "smoke", "paper"} <= set(task.schedules)
    tiny = task.schedule("tiny")
    assert task.synthetic_spec(tiny, None) == {"n_train": tiny.synthetic_train, "n_val": tiny.synthetic_val,
                                               "img_size": 64, "generator": 1}
    assert task.synthetic_spec(tiny, 32)["img_size"] == 32
    with pytest.raises(PelaBenchError, match="no schedule for budget 'huge'"):
        task.schedule("huge")


def test_unknown_tasks():
    with pytest.raises(PelaBenchError, match="unknown task"):
        create_task("dance")


def test_feature_similarity_per_class_by_hand():
    from tasks.classification import feature_similarity

    s2 = 2 ** -0.5
    # class 0: two images at 90 degrees; class 1: two identical images; class 2: one image
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s2, s2], [s2, s2], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [s2, s2], [0.0, 1.0], [-1.0, 0.0]])
    out = feature_similarity((feats, labels), (ref, labels), ["a", "b", "c"])
    assert out["classes"] == ["a", "b", "c"]
    assert out["within_class"][0] == pytest.approx(0.0) and out["within_class"][1] == pytest.approx(1.0)
    assert out["within_class"][2] is None  # one image: no pair
    assert out["to_dense"] == pytest.approx([0.5, (1 + s2) / 2, -1.0])
    narrow = (feats[:, :1], labels)  # another width: no per-image comparison
    assert feature_similarity(narrow, (ref, labels), ["a", "b", "c"])["to_dense"] == [None, None, None]
    with pytest.raises(PelaBenchError, match="different images"):
        feature_similarity((feats, labels), (ref, labels.flip(0)), ["a", "b", "c"])


def test_run_reports_feature_similarity_against_the_reference(root):
    task = create_task("cls")
    data = task.load(root, task.schedule("tiny"), 64)
    torch.manual_seed(0)
    teacher = create_backbone("deit_micro", num_classes=16).eval()
    ctx = RunContext(torch.device("cpu"), 0, Path("/nonexistent"), workers=0, progress=False, reference=teacher)
    same = task.run(teacher, data, task.schedule("tiny"), ctx).analysis["feature_similarity"]
    assert same["to_dense"] == pytest.approx([1.0] * 16)  # the reference compared with itself
    other = create_backbone("deit_micro", num_classes=16).eval()
    sims = task.run(other, data, task.schedule("tiny"), ctx).analysis["feature_similarity"]
    assert all(v < 0.999 for v in sims["to_dense"]) and len(sims["within_class"]) == 16
    no_ref = RunContext(torch.device("cpu"), 0, Path("/nonexistent"), workers=0, progress=False)
    assert task.run(other, data, task.schedule("tiny"), no_ref).analysis == {}
