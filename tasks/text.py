"""Offline tokenizers and text preparation for the vision-language tasks.

Two vocabularies, both read from a ``vocab.txt`` (one token per line, as BERT ships it):

- the synthetic world's word-level vocabulary, written next to its data;
- BERT's WordPiece vocabulary (30,522 entries) for real data and ALBEF checkpoints.
  ``transformers``' ``BertTokenizer.from_pretrained`` returns a 5-token vocabulary
  offline and turns every word into ``[UNK]`` without a word of warning, so the
  project reads the file itself and checks its size.

Captions are normalised as ALBEF's ``pre_caption`` does (lower case, punctuation
to spaces, at most `max_words` words) before tokenising.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import torch

from common.errors import PelaBenchError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
BERT_VOCAB_SIZE = 30522
IGNORE_INDEX = -100  # must equal the backbones' label for unmasked tokens


def pre_caption(text: str, max_words: int = 30) -> str:
    """ALBEF's caption normalisation: lower case, punctuation to spaces, whitespace collapsed, truncated."""
    text = re.sub(r"([,.'!?\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text.replace("-", " ").replace("/", " ")).strip()
    return " ".join(text.split(" ")[:max_words])


class Tokenizer:
    """Word-level, or WordPiece when the vocabulary has ``##`` continuation pieces."""

    def __init__(self, tokens: list[str], source: str = "<memory>") -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in tokens]
        if missing:
            raise PelaBenchError(f"vocabulary {source} lacks the special token(s) {', '.join(missing)}")
        if len(set(tokens)) != len(tokens):
            raise PelaBenchError(f"vocabulary {source} lists a token twice")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(tokens)}
        self.source = source
        self.wordpiece = any(t.startswith("##") for t in tokens)
        self.pad_id, self.unk_id = self.index[PAD], self.index[UNK]
        self.cls_id, self.sep_id, self.mask_id = self.index[CLS], self.index[SEP], self.index[MASK]
        self.special_ids = torch.tensor(sorted(self.index[t] for t in SPECIAL_TOKENS))
        # Words a masked-language step may substitute: everything but the special tokens.
        self.word_ids = torch.tensor([i for i, t in enumerate(tokens) if t not in SPECIAL_TOKENS])

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_file(cls, path: str | Path, expect_size: int | None = None) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise PelaBenchError(f"vocabulary file not found: {path}")
        tokens = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        tokens = [t for t in tokens if t]
        if expect_size is not None and len(tokens) != expect_size:
            raise PelaBenchError(f"{path} has {len(tokens)} tokens; a BERT WordPiece vocabulary has {expect_size}")
        return cls(tokens, str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text("\n".join(self.tokens) + "\n", encoding="utf-8")

    def _pieces(self, word: str) -> list[int]:
        if word in self.index:
            return [self.index[word]]
        if not self.wordpiece:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):  # greedy longest match first, as BERT's WordPiece
            end, found = len(word), None
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.index:
                    found = self.index[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk_id]
            pieces.append(found)
            start = end
        return pieces

    def _words(self, text: str) -> list[str]:
        if not self.wordpiece:
            return text.split()
        # BERT's basic tokenizer: accents stripped, punctuation split off.
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """``[CLS] pieces [SEP]``, truncated to `max_tokens` (the ``[SEP]`` kept)."""
        ids = [p for w in self._words(text) for p in self._pieces(w)]
        return [self.cls_id, *ids[: max_tokens - 2], self.sep_id]

    def pad(self, ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids padded to `length`, and the attention mask (1 on real tokens)."""
        out = torch.full((length,), self.pad_id, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros(length, dtype=torch.long)
        mask[: len(ids)] = 1
        return out, mask

    def decode(self, ids: list[int]) -> str:
        words = [self.tokens[i] for i in ids if i not in (self.pad_id, self.cls_id, self.sep_id)]
        return " ".join(words).replace(" ##", "")


def mask_tokens(ids: torch.Tensor, tokenizer: Tokenizer, probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of one sequence: each ordinary token is picked with `probability`;
    of those, 80 % become ``[MASK]``, 10 % a random word, 10 % stay. Labels are the
    original ids at picked positions and `IGNORE_INDEX` elsewhere.

    Unlike ALBEF's code, ``[SEP]`` is never picked and substitutes are words, not
    special tokens. Drawn from torch's global generator (the trainer seeds it per sample).
    """
    ids = ids.clone()
    labels = ids.clone()
    ordinary = ~torch.isin(ids, tokenizer.special_ids)
    picked = (torch.rand(ids.shape) < probability) & ordinary
    labels[~picked] = IGNORE_INDEX
    roll = torch.rand(ids.shape)
    ids[picked & (roll < 0.8)] = tokenizer.mask_id
    swap = picked & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = tokenizer.word_ids[torch.randint(len(tokenizer.word_ids), (int(swap.sum()),))]
    return ids, labels


class ClipBpeTokenizer:
    """open_clip's bundled byte-pair encoding (49,408 tokens, read from the package: works offline),
    with `Tokenizer`'s interface: ``<start> pieces <end>``, padded with 0 as open_clip pads."""

    def __init__(self) -> None:
        from open_clip.tokenizer import SimpleTokenizer  # the BPE merges ship inside the package

        self._bpe = SimpleTokenizer()
        self.source = "open_clip BPE"
        self.pad_id = 0
        self.cls_id, self.sep_id = self._bpe.sot_token_id, self._bpe.eot_token_id

    def __len__(self) -> int:
        return len(self._bpe.encoder)

    def encode(self, text: str, max_tokens: int) -> list[int]:
        return [self.cls_id, *self._bpe.encode(text)[: max_tokens - 2], self.sep_id]

    def pad(self, ids: list[int], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.full((length,), self.pad_id, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask = torch.zeros(length, dtype=torch.long)
        mask[: len(ids)] = 1
        return out, mask

    def decode(self, ids: list[int]) -> str:
        return self._bpe.decode([i for i in ids if i not in (self.pad_id, self.cls_id, self.sep_id)]).strip()
