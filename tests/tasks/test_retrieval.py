"""Image-text retrieval: the recall metric, ALBEF-format data (synthetic and malformed), fine-tune and evaluate."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from backbones import create_backbone
from benchmark.trainer import OptimConfig, train
from common.errors import PelaBenchError
from tasks import RunContext, create_task
from tasks.retrieval import RetrievalTask, retrieval_metrics
from tasks.synthetic import MARKER_FILE
from tasks.synthetic_vl import CAPTIONS_PER_IMAGE, write_pretraining, write_retrieval

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py
TINY = RetrievalTask.schedules["tiny"]


def test_recall_counts_an_image_by_its_best_ranked_caption():
    # 3 images with 2, 1 and 2 captions: texts 0-1 -> image 0, text 2 -> image 1, texts 3-4 -> image 2.
    img2txt, txt2img = [[0, 1], [2], [3, 4]], [0, 0, 1, 2, 2]
    i2t = torch.tensor([
        [0.1, 0.9, 0.0, 0.5, 0.2],  # image 0: its caption 1 ranks first            -> rank 0
        [0.8, 0.1, 0.3, 0.9, 0.2],  # image 1: its caption 2 ranks third           -> rank 2
        [0.4, 0.3, 0.2, 0.1, 0.0],  # image 2: best of captions 3, 4 ranks fourth   -> rank 3
    ])
    t2i = torch.tensor([
        [0.9, 0.1, 0.0],  # text 0 -> image 0 first
        [0.2, 0.5, 0.4],  # text 1 -> image 0 third
        [0.3, 0.6, 0.1],  # text 2 -> image 1 first
        [0.5, 0.4, 0.3],  # text 3 -> image 2 third
        [0.0, 0.1, 0.7],  # text 4 -> image 2 first
    ])
    m = retrieval_metrics(i2t, t2i, img2txt, txt2img)
    assert m["tr1"] == pytest.approx(100 / 3) and m["tr5"] == 100.0 and m["tr10"] == 100.0
    assert m["ir1"] == pytest.approx(60.0) and m["ir5"] == 100.0
    assert m["r_mean"] == pytest.approx((100 / 3 + 100 + 100 + 60 + 100 + 100) / 6)


@pytest.fixture(scope="module")
def ret_root(tmp_path_factory):
    return write_retrieval(tmp_path_factory.mktemp("ret"), n_train=24, n_val=4, n_test=12, progress=False)


def test_synthetic_captions_describe_their_scene_in_albef_json(ret_root):
    task = create_task("retrieval")
    data = task.load(ret_root, TINY, 64)
    assert data.provenance == "synthetic"
    assert data.audit == {"train_pairs": 24 * CAPTIONS_PER_IMAGE, "train_images": 24, "test_images": 12,
                          "test_captions": 12 * CAPTIONS_PER_IMAGE}
    test = json.loads((ret_root / "retrieval_test.json").read_text())
    captions = test[0]["caption"]
    assert len(set(captions)) == CAPTIONS_PER_IMAGE  # five different templates
    tok = data.content.tokenizer
    every = [c for e in test for c in e["caption"]]
    assert all(tok.unk_id not in tok.encode(c, 40) for c in every)  # the vocabulary covers the world's words
    assert len(set(every)) > len(every) // 2  # captions mostly tell images apart
    # Same seed, same bytes: the world is a pure function of its seed.
    again = write_retrieval(ret_root.parent / "again", n_train=24, n_val=4, n_test=12, progress=False)
    assert (again / "retrieval_test.json").read_text() == (ret_root / "retrieval_test.json").read_text()


def _broken(root, tmp_path, edit):
    dst = tmp_path / "broken"
    shutil.copytree(root, dst)
    edit(dst)
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda r: (r / "retrieval_train.json").write_text(json.dumps([{"image": "images/x.png"}])),
     r"retrieval_train.json entry 0: no 'caption' field"),
    (lambda r: (r / "retrieval_test.json").write_text(json.dumps([{"image": "images/x.png", "caption": [""]}])),
     r"retrieval_test.json entry 0: an empty or non-text caption"),
    (lambda r: (r / "retrieval_test.json").write_text("[{"), r"cannot read .*retrieval_test.json"),
    (lambda r: (r / "images" / "ret-test" / "000003.png").unlink(), r"1 image\(s\) listed but not found, e.g. .*000003.png"),
    (lambda r: (r / "vocab.txt").unlink(), r"has no vocab.txt: put BERT's WordPiece vocabulary"),
    (lambda r: (r / MARKER_FILE).unlink(), r"vocab.txt has \d+ tokens; a BERT WordPiece vocabulary has 30522"),
    (lambda r: (r / "retrieval_train.json").rename(r / "other.json"), r"no '\*_train.json' file"),
])
def test_bad_retrieval_data_is_named(ret_root, tmp_path, edit, message):
    root = _broken(ret_root, tmp_path, edit)
    with pytest.raises(PelaBenchError, match=message):
        create_task("retrieval").load(root, TINY, 64)


def _fit(model, loss_fn, dataset, *, epochs, lr, batch_size, weight_decay, warmup_epochs, desc):
    return train(model.parameters(), loss_fn, dataset, OptimConfig(epochs=epochs, lr=lr, weight_decay=weight_decay,
                                                                   warmup_epochs=warmup_epochs),
                 batch_size=batch_size, seed=0, modules=[model], desc=desc, progress=False)


def test_fine_tune_then_rank_with_and_without_itm_reranking(ret_root, tmp_path):
    task = create_task("retrieval")
    data = task.load(ret_root, TINY, 64)
    torch.manual_seed(0)
    student = create_backbone("albef_tiny", vocab_size=len(data.content.tokenizer))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    ctx = RunContext(torch.device("cpu"), 0, tmp_path / "work", workers=0, progress=False, fit=_fit)
    res = task.run(student, data, TINY, ctx)
    assert set(res.metrics) == {m.name for m in task.metrics}
    assert all(0.0 <= v <= 100.0 for v in res.metrics.values())
    assert res.details["train_batch"] == TINY.batch_size and set(res.details["loss_terms"]) >= {"itc", "itm"}
    assert res.model.mlm_head is None and student.mlm_head is not None  # the student itself is untouched
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    # k_test=0 ranks by similarity alone; re-ranking changes the scores, so (almost surely) the metrics.
    plain = task.evaluate(res.model, data, replace(TINY, k_test=0), torch.device("cpu"))
    assert set(plain) == set(res.metrics)
    inputs = task.example_inputs(data, TINY, res.model, 2)
    assert res.model(**inputs).shape == (2, 2)
    with pytest.raises(PelaBenchError, match="RunContext.fit must be set"):
        task.run(student, data, TINY, replace(ctx, fit=None))


def test_vl_tasks_refuse_a_vision_only_backbone_and_pretraining_samples_carry_masks(tmp_path):
    from backbones import create_backbone as cb

    with torch.device("meta"):
        info = cb("deit_micro").info
    for name in ("retrieval", "vlp"):
        with pytest.raises(PelaBenchError, match="needs a vision-language backbone"):
            create_task(name).check_backbone(info)
    root = write_pretraining(tmp_path / "vlp", n_train=8, progress=False)
    task = create_task("vlp")
    data = task.load(root, task.schedule("tiny"), 64)
    sample = task.train_split(data)[0]
    assert set(sample) == {"image", "text_ids", "text_mask", "mlm_ids", "mlm_labels"}
    assert sample["image"].shape == (3, 64, 64) and sample["text_ids"].shape == (20,)
    assert task.backbone_overrides(data) == {"vocab_size": len(data.content.tokenizer)}


@pytest.mark.parametrize("name", ["vlp", "retrieval", "vqa", "ve", "grounding", "zeroshot"])
def test_vl_data_stages_are_keyed_by_the_writer_version(name, monkeypatch):
    import tasks.synthetic_vl as writers

    task = create_task(name)
    spec = task.synthetic_spec(task.schedule("tiny"), 64)
    assert spec["writer"] == writers.VL_WRITER_VERSION
    monkeypatch.setattr(writers, "VL_WRITER_VERSION", writers.VL_WRITER_VERSION + 1)
    assert task.synthetic_spec(task.schedule("tiny"), 64) != spec  # a new writer, a new data stage


@pytest.mark.parametrize("name", ["cls", "seg", "det", "vlp", "retrieval", "vqa", "ve", "grounding"])
def test_synthetic_data_stages_are_keyed_by_the_scene_generator_version(name, monkeypatch):
    import tasks.synthetic as scenes

    task = create_task(name)
    spec = task.synthetic_spec(task.schedule("tiny"), 64)
    assert spec["generator"] == scenes.GENERATOR_VERSION
    monkeypatch.setattr(scenes, "GENERATOR_VERSION", scenes.GENERATOR_VERSION + 1)
    assert task.synthetic_spec(task.schedule("tiny"), 64) != spec  # new scenes, a new data stage


@pytest.mark.parametrize("name", ["seg", "det"])
def test_dense_data_stages_are_keyed_by_the_label_version_too(name, monkeypatch):
    import tasks.synthetic as scenes

    task = create_task(name)
    spec = task.synthetic_spec(task.schedule("tiny"), 64)
    assert spec["labels"] == scenes.DENSE_LABEL_VERSION
    monkeypatch.setattr(scenes, "DENSE_LABEL_VERSION", scenes.DENSE_LABEL_VERSION + 1)
    assert task.synthetic_spec(task.schedule("tiny"), 64) != spec  # new labels, a new data stage
