"""VQA: the accuracy rule and answer normalisation on hand-computed cases, the answer decoder's loss and
ranking against brute force, ALBEF-format data (synthetic and malformed), fine-tune and evaluate."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from backbones import create_backbone
from common.errors import PelaBenchError
from tasks import RunContext, create_task
from tasks.synthetic_vl import ANNOTATORS, QUESTIONS_PER_IMAGE, write_vqa
from tasks.vqa import VQATask, encode_answer, normalize_answer, vqa_accuracy
from tests.tasks.test_retrieval import _fit

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = VQATask.schedules["tiny"]


@pytest.mark.parametrize("raw, normal", [
    ("Two", "2"), ("the dog.", "dog"), ("a red one", "red 1"), ("t-shirt", "t shirt"), ("1,000", "1000"),
    ("3.5", "3.5"), ("dont", "don't"), ("  Yes!  ", "yes"), ("ten , please", "10 please"),
])
def test_answers_are_normalised_as_the_official_evaluation(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_is_the_mean_over_leave_one_out_subsets():
    two_yes = ["yes"] * 2 + ["no"] * 8
    # Leaving out a "yes" leaves 1 match (1/3); leaving out a "no" leaves 2 (2/3): (2/3 + 16/3) / 10.
    assert vqa_accuracy("yes", two_yes) == pytest.approx(0.6)
    assert vqa_accuracy("no", two_yes) == pytest.approx(1.0)  # 7 or 8 matches in every subset
    three = ["blue"] * 3 + ["green"] * 7
    assert vqa_accuracy("blue", three) == pytest.approx((3 * 2 / 3 + 7 * 1.0) / 10)
    assert vqa_accuracy("Blue.", three) == pytest.approx(0.9)  # normalised before matching
    assert vqa_accuracy("two", ["2"] * 10) == 1.0 and vqa_accuracy("red", ["blue"] * 10) == 0.0
    assert vqa_accuracy("cat", ["cat"] + ["dog"] * 9) == pytest.approx(0.9 * (1 / 3))
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


@pytest.fixture(scope="module")
def vqa_root(tmp_path_factory):
    return write_vqa(tmp_path_factory.mktemp("vqa"), n_train=12, n_test=6, progress=False)


def test_synthetic_questions_in_albef_json(vqa_root):
    data = create_task("vqa").load(vqa_root, TINY, 64)
    assert data.provenance == "synthetic"
    assert data.audit["train_questions"] == 12 * QUESTIONS_PER_IMAGE and data.audit["test_questions"] == 6 * QUESTIONS_PER_IMAGE
    assert data.audit["test_questions_without_candidate"] == 0
    entries = json.loads((vqa_root / "vqa_train.json").read_text())
    assert all(len(e["answer"]) == ANNOTATORS for e in entries)
    assert len({e["question"].split()[0] for e in entries}) >= 3  # several kinds of question
    tok = data.content.tokenizer
    assert all(tok.unk_id not in tok.encode(e["question"], 40) for e in entries)
    majority = {Counter(e["answer"]).most_common(1)[0][0] for e in entries}
    assert majority <= set(data.content.answers)
    again = write_vqa(vqa_root.parent / "again", n_train=12, n_test=6, progress=False)
    assert (again / "vqa_test.json").read_text() == (vqa_root / "vqa_test.json").read_text()


def test_training_samples_weight_each_distinct_answer_by_its_annotators(vqa_root):
    from tasks.vl_data import image_transforms
    from tasks.vqa import question_answers

    task = create_task("vqa")
    data = task.load(vqa_root, TINY, 64)
    ds = question_answers(data.root, data.content.train, data.content.tokenizer, image_transforms(64, True, False), TINY)
    for i, e in enumerate(data.content.train[:6]):
        s = ds[i]
        counts = Counter(e["answer"]).most_common()
        assert s["answer_weight"].sum() == pytest.approx(1.0) and int((s["answer_weight"] > 0).sum()) == len(counts)
        assert s["answer_weight"][0] == pytest.approx(counts[0][1] / ANNOTATORS)
        ids, tok = s["answer_ids"][0], data.content.tokenizer
        assert ids[0] == tok.cls_id and tok.decode(ids.tolist()) == counts[0][0]


def _broken(root, tmp_path, edit):
    dst = tmp_path / "broken"
    shutil.copytree(root, dst)
    edit(dst)
    return dst


def _rewrite(path, change):
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))


@pytest.mark.parametrize("edit, message", [
    (lambda r: _rewrite(r / "vqa_train.json", lambda es: es[3].pop("answer")), r"vqa_train.json entry 3: no 'answer' field"),
    (lambda r: _rewrite(r / "vqa_test.json", lambda es: es[1].update(answer=[])), r"vqa_test.json entry 1: 'answer' must be"),
    (lambda r: _rewrite(r / "vqa_test.json", lambda es: es[2].update(question=" ? ")), r"vqa_test.json entry 2: an empty question"),
    (lambda r: (r / "answer_list.json").write_text(json.dumps(["yes", ""])), r"answer_list.json entry 1: an empty"),
    (lambda r: (r / "answer_list.json").write_text(json.dumps(["yes", "yes"])), r"answer 'yes' is listed twice"),
    (lambda r: (r / "answer_list.json").unlink(), r"no answer_list.json"),
    (lambda r: (r / "answer_list.json").write_text(json.dumps(["red " * 9])), r"longer than answer_tokens=8"),
    (lambda r: (r / "images" / "vqa-test" / "000002.png").unlink(), r"1 image\(s\) listed but not found, e.g. .*000002.png"),
])
def test_bad_vqa_data_is_named(vqa_root, tmp_path, edit, message):
    with pytest.raises(PelaBenchError, match=message):
        create_task("vqa").load(_broken(vqa_root, tmp_path, edit), TINY, 64)


def test_a_question_whose_answers_are_not_candidates_is_counted_and_scores_zero(vqa_root, tmp_path):
    root = _broken(vqa_root, tmp_path, lambda r: _rewrite(r / "vqa_test.json", lambda es: es[0].update(answer=["purple"] * 10)))
    data = create_task("vqa").load(root, TINY, 64)
    assert data.audit["test_questions_without_candidate"] == 1
    assert all(vqa_accuracy(a, ["purple"] * 10) == 0.0 for a in data.content.answers)


def _question_batch(vocab, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text_ids": torch.randint(5, vocab, (n, 9), generator=g),
            "text_mask": torch.ones(n, 9, dtype=torch.long)}


def _answers(tok, words, length=6):
    pairs = [encode_answer(tok, w, length) for w in words]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _full_log_likelihood(model, batch, ids, mask):
    """Brute force: each answer's summed next-token log-probability, one question at a time."""
    out = torch.zeros(batch["image"].shape[0], ids.shape[0])
    for q in range(batch["image"].shape[0]):
        states = model.question_states(batch["image"][q:q + 1], batch["text_ids"][q:q + 1], batch["text_mask"][q:q + 1])
        for a in range(ids.shape[0]):
            logits = model.answer_logits(states, batch["text_mask"][q:q + 1], ids[a:a + 1], mask[a:a + 1])[0, :-1]
            lp = F.log_softmax(logits, -1).gather(1, ids[a, 1:, None]).squeeze(1)
            out[q, a] = (lp * mask[a, 1:]).sum()
    return out


def test_answer_ranking_matches_brute_force_likelihood(vqa_root):
    tok = create_task("vqa").load(vqa_root, TINY, 64).content.tokenizer
    torch.manual_seed(0)
    model = create_backbone("albef_tiny", vocab_size=len(tok)).attach_answer_decoder().eval()
    batch = _question_batch(len(tok), n=3)
    ids, mask = _answers(tok, ["red", "blue", "top left", "yes", "bottom right", "two"])
    with torch.no_grad():
        brute = _full_log_likelihood(model, batch, ids, mask)
        every = model.rank_answers(batch["image"], batch["text_ids"], batch["text_mask"], ids, mask, k=ids.shape[0])
        assert torch.equal(every, brute.argmax(1))
        # With k=1 the pick is the candidate whose first word is likeliest.
        first = model.answer_logits(model.question_states(**batch), batch["text_mask"], ids[:3, :1],
                                    torch.ones(3, 1, dtype=torch.long))[:, 0].softmax(-1)[:, ids[:, 1]]
        one = model.rank_answers(batch["image"], batch["text_ids"], batch["text_mask"], ids, mask, k=1)
        assert torch.equal(one, first.argmax(1))


def test_answer_loss_weights_answers_and_skips_empty_slots(vqa_root):
    tok = create_task("vqa").load(vqa_root, TINY, 64).content.tokenizer
    torch.manual_seed(0)
    model = create_backbone("albef_tiny", vocab_size=len(tok), alpha=0.0).attach_answer_decoder().eval()
    batch = _question_batch(len(tok), n=2)
    ids, mask = _answers(tok, ["red", "blue", "yes"])
    batch.update(answer_ids=torch.stack([ids, ids]), answer_mask=torch.stack([mask, mask]),
                 answer_weight=torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]]))
    with torch.no_grad():
        loss = model.objective_terms("vqa", batch)["vqa"]
        nll = -_full_log_likelihood(model, batch, ids, mask)
        assert loss == pytest.approx(float((0.7 * nll[0, 0] + 0.3 * nll[0, 1] + nll[1, 2]) / 2), rel=1e-5)
        other = dict(batch, answer_ids=batch["answer_ids"].clone())
        other["answer_ids"][0, 2, 1] = tok.index["green"]  # an unused slot: no effect
        assert model.objective_terms("vqa", other)["vqa"] == pytest.approx(float(loss), rel=1e-6)


def test_fine_tune_then_answer(vqa_root, tmp_path):
    task = create_task("vqa")
    data = task.load(vqa_root, TINY, 64)
    torch.manual_seed(0)
    student = create_backbone("albef_tiny", vocab_size=len(data.content.tokenizer))
    ctx = RunContext(torch.device("cpu"), 0, tmp_path / "work", workers=0, progress=False, fit=_fit)
    res = task.run(student, data, TINY, ctx)
    assert set(res.metrics) == {"vqa_acc"} and 0.0 <= res.metrics["vqa_acc"] <= 100.0
    assert res.details["loss_terms"].keys() >= {"vqa"} and res.model.decoder is not None and student.decoder is None
    picks = task.predict(res.model, data, TINY, torch.device("cpu"))
    assert len(picks) == len(data.content.test) and set(picks) <= set(data.content.answers)
    scorer = task.measured_module(res)
    inputs = task.example_inputs(data, TINY, res.model, 2)
    assert scorer(**inputs).shape == (2, TINY.answer_tokens, len(data.content.tokenizer))
    with pytest.raises(PelaBenchError, match="RunContext.fit must be set"):
        task.run(student, data, TINY, RunContext(torch.device("cpu"), 0, tmp_path / "w2", fit=None))
