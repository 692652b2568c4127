"""SNLI-VE: synthetic hypotheses that need both image and sentence, malformed data, the head, fine-tune and evaluate."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch

from backbones import create_backbone
from common.errors import PelaBenchError
from tasks import RunContext, create_task
from tasks.entailment import EntailmentTask
from tasks.synthetic_vl import NEUTRAL_WORDS, VE_LABELS, write_entailment
from tests.tasks.test_retrieval import _fit

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = EntailmentTask.schedules["tiny"]


@pytest.fixture(scope="module")
def ve_root(tmp_path_factory):
    return write_entailment(tmp_path_factory.mktemp("ve"), n_train=40, n_test=6, progress=False)


def test_synthetic_hypotheses_are_balanced_and_not_decided_by_words_alone(ve_root):
    data = create_task("ve").load(ve_root, TINY, 64)
    assert data.provenance == "synthetic"
    assert data.audit == {"train_pairs": 120, "test_pairs": 18, "test_entailment": 6, "test_neutral": 6,
                          "test_contradiction": 6}
    train = json.loads((ve_root / "ve_train.json").read_text())
    per_image = Counter(e["image"] for e in train)
    assert set(per_image.values()) == {3}  # one of each label per scene
    claims = {label: sum(any(w in e["sentence"].split() for w in NEUTRAL_WORDS) for e in train if e["label"] == label)
              for label in VE_LABELS}
    assert claims["entailment"] == 0 and claims["neutral"] == 40 and 0 < claims["contradiction"] < 40
    tok = data.content.tokenizer
    assert all(tok.unk_id not in tok.encode(e["sentence"], 40) for e in train)


def _rewrite(path, change):
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))


@pytest.mark.parametrize("edit, message", [
    (lambda r: _rewrite(r / "ve_train.json", lambda es: es[4].update(label="maybe")),
     r"ve_train.json entry 4: label 'maybe' is not one of entailment, neutral, contradiction"),
    (lambda r: _rewrite(r / "ve_test.json", lambda es: es[0].update(sentence="   ")), r"ve_test.json entry 0: an empty sentence"),
    (lambda r: _rewrite(r / "ve_test.json", lambda es: es[1].pop("sentence")), r"ve_test.json entry 1: no 'sentence' field"),
    (lambda r: (r / "images" / "ve-test" / "000001.png").unlink(), r"1 image\(s\) listed but not found"),
])
def test_bad_entailment_data_is_named(ve_root, tmp_path, edit, message):
    dst = tmp_path / "broken"
    shutil.copytree(ve_root, dst)
    edit(dst)
    with pytest.raises(PelaBenchError, match=message):
        create_task("ve").load(dst, TINY, 64)


def test_fine_tune_then_classify(ve_root, tmp_path):
    task = create_task("ve")
    data = task.load(ve_root, TINY, 64)
    torch.manual_seed(0)
    student = create_backbone("albef_tiny", vocab_size=len(data.content.tokenizer))
    ctx = RunContext(torch.device("cpu"), 0, tmp_path / "work", workers=0, progress=False, fit=_fit)
    res = task.run(student, data, TINY, ctx)
    assert set(res.metrics) == {"ve_acc"} and 0.0 <= res.metrics["ve_acc"] <= 100.0
    model = res.model
    assert model.cls_head[-1].out_features == 3 and model.itm_head is None and student.cls_head is None
    assert not any(p.requires_grad for p in model.cls_head_m.parameters())
    # The momentum head followed the online one during the fine-tune (EMA), so they differ from their start.
    assert not torch.equal(model.cls_head[0].weight, model.cls_head_m[0].weight)
    inputs = task.example_inputs(data, TINY, model, 2)
    assert task.measured_module(res)(**inputs).shape == (2, 3)
    # The same seed gives the same head: its init does not depend on what ran before.
    torch.manual_seed(123)
    again = task.run(student, data, TINY, RunContext(torch.device("cpu"), 0, tmp_path / "again", workers=0,
                                                     progress=False, fit=_fit))
    assert again.metrics == res.metrics
