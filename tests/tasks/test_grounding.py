"""Weakly supervised grounding: box scoring and IoU by hand, Grad-CAM from the cross-attention, the metric
with oracle heat maps, malformed boxes, fine-tune and evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tasks.grounding as grounding
from backbones import create_backbone
from common.errors import PelaBenchError
from tasks import RunContext, create_task
from tasks.grounding import GroundingTask, box_iou, gradcam, pick_proposal
from tasks.synthetic_vl import write_grounding
from tests.tasks.test_retrieval import _fit

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = GroundingTask.schedules["tiny"]


def test_iou_and_proposal_scoring_by_hand():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 4, 4], [10, 10, 2, 2]) == 0.0
    heat = torch.zeros(20, 20)
    heat[2:6, 2:6] = 1.0  # mass 16 in a 4x4 square
    # Mass over sqrt(area): the tight box (16/4) beats the box holding all of it and more (16/10).
    assert pick_proposal(heat, [[0, 0, 10, 10], [2, 2, 4, 4], [10, 10, 5, 5]]) == 1
    assert pick_proposal(heat, [[10, 10, 5, 5], [0, 0, 10, 10]]) == 1


@pytest.fixture(scope="module")
def ground_root(tmp_path_factory):
    return write_grounding(tmp_path_factory.mktemp("ground"), n_train=12, n_test=8, progress=False)


def test_synthetic_expressions_single_out_one_object(ground_root):
    data = create_task("grounding").load(ground_root, TINY, 64)
    assert data.provenance == "synthetic" and data.audit["boxes_clipped"] == 0
    for e in data.content.test:
        assert e["bbox"] in e["proposals"] and len(e["proposals"]) >= 2
        # No other proposal counts as a hit: the metric can tell the target apart.
        assert sum(box_iou(p, e["bbox"]) >= 0.5 for p in e["proposals"]) == 1
    train = json.loads((ground_root / "grounding_train.json").read_text())
    assert {"image", "caption", "image_id"} <= set(train[0]) and "bbox" not in train[0]  # weak supervision


def _rewrite(path, change):
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))


@pytest.mark.parametrize("edit, message", [
    (lambda r: _rewrite(r / "grounding_test.json", lambda es: es[1].update(proposals=[[100, 100, 5, 5]])),
     r"grounding_test.json entry 1: a box lies wholly outside its 64x64 image"),
    (lambda r: _rewrite(r / "grounding_test.json", lambda es: es[0].update(bbox=[1, 2, 0, 5])),
     r"grounding_test.json entry 0: 'bbox' and every proposal must be \[x, y, w, h\]"),
    (lambda r: _rewrite(r / "grounding_test.json", lambda es: es[2].update(proposals=[])),
     r"entry 2: .*at least one proposal"),
    (lambda r: _rewrite(r / "grounding_test.json", lambda es: es[0].update(text="!!")), r"entry 0: an empty referring"),
    (lambda r: _rewrite(r / "grounding_train.json", lambda es: es[3].pop("image_id")), r"grounding_train.json entry 3: no 'image_id'"),
])
def test_bad_grounding_data_is_named(ground_root, tmp_path, edit, message):
    dst = tmp_path / "broken"
    shutil.copytree(ground_root, dst)
    edit(dst)
    with pytest.raises(PelaBenchError, match=message):
        create_task("grounding").load(dst, TINY, 64)


def test_a_proposal_reaching_outside_its_image_is_clipped_and_counted(ground_root, tmp_path):
    dst = tmp_path / "clip"
    shutil.copytree(ground_root, dst)
    _rewrite(dst / "grounding_test.json", lambda es: es[0]["proposals"].append([50, 50, 30, 30]))
    data = create_task("grounding").load(dst, TINY, 64)
    assert data.audit["boxes_clipped"] == 1 and data.content.test[0]["proposals"][-1] == [50, 50, 14, 14]


def test_gradcam_reads_the_chosen_fusion_layer():
    torch.manual_seed(0)
    model = create_backbone("albef_tiny").eval()
    g = torch.Generator().manual_seed(1)
    image, ids = torch.randn(2, 3, 64, 64, generator=g), torch.randint(5, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    maps = gradcam(model, image, ids, mask, layer=1)
    assert maps.shape == (2, 8, 8) and (maps >= 0).all() and maps.sum() > 0
    assert not model.fusion_cross_attention(1).keep_maps and model.fusion_cross_attention(1).maps is None
    assert not torch.allclose(maps, gradcam(model, image, ids, mask, layer=0))
    # Padding is not an expression token: what sits there does not move the map.
    other = ids.clone()
    other[1, 5:] = 3
    assert torch.allclose(maps[1], gradcam(model, image, other, mask, layer=1)[1], atol=1e-6)
    with pytest.raises(PelaBenchError, match="has 2 fusion layers; there is no fusion layer 2"):
        model.fusion_cross_attention(2)


def test_metric_with_oracle_heat_maps(ground_root, monkeypatch):
    task = create_task("grounding")
    data = task.load(ground_root, TINY, 64)
    model = create_backbone("albef_tiny", vocab_size=len(data.content.tokenizer)).eval()
    test = data.content.test

    def lit(target: bool):
        def fake(model, image, text_ids, text_mask, layer):
            maps = torch.zeros(image.shape[0], 64, 64)
            for row, e in enumerate(test[fake.seen:fake.seen + image.shape[0]]):
                box = e["bbox"] if target else next(p for p in e["proposals"] if box_iou(p, e["bbox"]) < 0.5)
                x, y, w, h = (int(round(v)) for v in box)
                maps[row, y:y + h, x:x + w] = 1.0
            fake.seen += image.shape[0]
            return maps
        fake.seen = 0
        return fake

    monkeypatch.setattr(grounding, "gradcam", lit(True))
    assert task.evaluate(model, data, TINY, torch.device("cpu")) == {"grounding_acc": 100.0}
    monkeypatch.setattr(grounding, "gradcam", lit(False))
    assert task.evaluate(model, data, TINY, torch.device("cpu")) == {"grounding_acc": 0.0}


def test_fine_tune_then_ground(ground_root, tmp_path):
    task = create_task("grounding")
    data = task.load(ground_root, TINY, 64)
    torch.manual_seed(0)
    student = create_backbone("albef_tiny", vocab_size=len(data.content.tokenizer))
    ctx = RunContext(torch.device("cpu"), 0, Path(tmp_path) / "work", workers=0, progress=False, fit=_fit)
    res = task.run(student, data, TINY, ctx)
    assert set(res.metrics) == {"grounding_acc"} and 0.0 <= res.metrics["grounding_acc"] <= 100.0
    assert res.details["gradcam_layer"] == 1 and set(res.details["loss_terms"]) >= {"itc", "itm"}
    assert res.model(**task.example_inputs(data, TINY, res.model, 2)).shape == (2, 2)
