"""Zero-shot classification: class names and prompts, the embedded world's words, bad input, scoring."""

from __future__ import annotations

import pytest
import torch

from backbones import create_backbone
from common.errors import PelaBenchError
from tasks import RunContext, create_task
from tasks.zeroshot import ZeroShotTask

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = ZeroShotTask.schedules["tiny"]


@pytest.fixture(scope="module")
def zs_root(tmp_path_factory):
    task = create_task("zeroshot")
    root = tmp_path_factory.mktemp("zs")
    task.write_synthetic(root, task.synthetic_spec(TINY, 64), seed=0, progress=False)
    return root


def test_class_names_are_read_with_the_captions_words(zs_root):
    data = create_task("zeroshot").load(zs_root, TINY, 64)
    d = data.content
    assert data.provenance == "synthetic" and "red striped" in d.classes and len(d.classes) == 16
    tok = d.tokenizer
    assert all(tok.unk_id not in tok.encode(p.format(c), 20) for c in d.classes for p in TINY.prompts)
    (zs_root / "classnames.txt").write_text("one\ntwo\n")
    try:
        with pytest.raises(PelaBenchError, match="names 2 classes but .* has 16 class folders"):
            create_task("zeroshot").load(zs_root, TINY, 64)
    finally:
        (zs_root / "classnames.txt").unlink()
    from dataclasses import replace

    with pytest.raises(PelaBenchError, match="must hold exactly one"):
        create_task("zeroshot").load(zs_root, replace(TINY, prompts=("a shape",)), 64)
    with pytest.raises(PelaBenchError, match="no val folder"):
        create_task("zeroshot").check_root(zs_root / "nothing")


def test_zero_shot_scores_by_the_nearest_class_embedding(zs_root, monkeypatch):
    task = create_task("zeroshot")
    data = task.load(zs_root, TINY, 64)
    torch.manual_seed(0)
    model = create_backbone("clip_tiny", vocab_size=len(data.content.tokenizer))
    ctx = RunContext(torch.device("cpu"), 0, zs_root / "work", workers=0, progress=False)
    res = task.run(model, data, TINY, ctx)
    assert 0 <= res.metrics["top1"] <= res.metrics["top5"] <= 100
    # An oracle text tower (each class embedding is the mean image embedding of its class) scores far above chance.
    labels = torch.tensor([label for _, label in data.content.val.samples])
    images = torch.stack([data.content.val[i][0] for i in range(len(labels))])
    with torch.no_grad():
        feats = model.image_feat(model.encode_image(images))
    oracle = torch.nn.functional.normalize(torch.stack([feats[labels == c].mean(0) for c in range(16)]), dim=-1)
    monkeypatch.setattr(ZeroShotTask, "class_embeddings", lambda self, m, d, s, dev: oracle)
    assert task.run(model, data, TINY, ctx).metrics["top1"] > 2 * 100 / 16
    assert task.measured_module(res)(**task.example_inputs(data, TINY, model, 2)).shape == (2, 32)
