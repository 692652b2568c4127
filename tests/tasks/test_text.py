"""Offline tokenizers, caption normalisation and BERT masking."""

from __future__ import annotations

import pytest
import torch

from common.errors import PelaBenchError
from tasks.synthetic import WorldConfig
from tasks.synthetic_vl import vocabulary
from tasks.text import (BERT_VOCAB_SIZE, IGNORE_INDEX, SPECIAL_TOKENS, Tokenizer, mask_tokens, pre_caption)

WORDPIECE = [*SPECIAL_TOKENS, "a", "dog", "run", "##s", "##ning", "on", "the", "grass", ",", "snow", "##board"]


def test_pre_caption_normalises_as_albef():
    assert pre_caption("A Dog, running on the GRASS!!  ") == "a dog running on the grass"
    assert pre_caption("one two three four", max_words=2) == "one two"
    assert pre_caption("well-lit half/full") == "well lit half full"


def test_word_level_tokenizer_pads_and_marks_unknown_words():
    tok = Tokenizer(vocabulary(WorldConfig()))
    ids = tok.encode("a red striped circle on the left", max_tokens=20)
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id and tok.unk_id not in ids
    assert tok.decode(ids) == "a red striped circle on the left"
    assert tok.encode("a purple circle", 20)[2] == tok.unk_id
    assert len(tok.encode("a red striped circle on the left", max_tokens=4)) == 4  # truncated, [SEP] kept
    text, mask = tok.pad(ids, 12)
    assert text.shape == (12,) and mask.tolist() == [1] * len(ids) + [0] * (12 - len(ids))
    assert (text[len(ids):] == tok.pad_id).all()


def test_wordpiece_splits_greedily_longest_first(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDPIECE) + "\n")
    tok = Tokenizer.from_file(path)
    assert tok.wordpiece
    ids = tok.encode("dog runs, snowboard snowboarding", 20)
    # A word with any piece missing is one [UNK] as a whole, as in BERT.
    assert [tok.tokens[i] for i in ids] == ["[CLS]", "dog", "run", "##s", ",", "snow", "##board", "[UNK]", "[SEP]"]
    assert tok.decode(tok.encode("dogs running", 20)) == "dogs running"  # pieces joined back


def test_vocabulary_files_are_checked(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDPIECE) + "\n")
    # The check that catches a 5-token stand-in for BERT's vocabulary (see tasks/text.py).
    with pytest.raises(PelaBenchError, match=f"has {len(WORDPIECE)} tokens; a BERT WordPiece vocabulary has "
                                             f"{BERT_VOCAB_SIZE}"):
        Tokenizer.from_file(path, expect_size=BERT_VOCAB_SIZE)
    path.write_text("a\nb\n")
    with pytest.raises(PelaBenchError, match=r"lacks the special token\(s\) \[PAD\]"):
        Tokenizer.from_file(path)
    with pytest.raises(PelaBenchError, match="vocabulary file not found"):
        Tokenizer.from_file(tmp_path / "missing.txt")


def test_masking_picks_ordinary_tokens_only_at_about_the_rate():
    tok = Tokenizer(vocabulary(WorldConfig()))
    ids, _ = tok.pad(tok.encode("a large red striped circle at the top left with two other shapes", 20), 20)
    torch.manual_seed(0)
    picked = total = 0
    for _ in range(400):
        masked, labels = mask_tokens(ids, tok, 0.15)
        chosen = labels != IGNORE_INDEX
        assert not torch.isin(ids[chosen], tok.special_ids).any()  # never [CLS], [SEP] or padding
        assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
        assert not torch.isin(masked[chosen], torch.tensor([tok.pad_id, tok.cls_id, tok.sep_id])).any()
        picked += int(chosen.sum())
        total += int((~torch.isin(ids, tok.special_ids)).sum())
    assert 0.12 < picked / total < 0.18
