"""What the vision-language tasks share: ALBEF's JSON files, images, tokenised text, batches as dicts.

A data root holds the task's JSON files (paths inside are relative to the root, or
absolute) and the tokenizer's ``vocab.txt``: the synthetic world's word list, or
BERT's WordPiece vocabulary (30,522 entries) for real data. Every entry is checked
when the file is read; a malformed one is an error naming the file and the index.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from common.batch import move_to
from common.errors import PelaBenchError
from tasks.base import RunContext, Task, TaskData, TaskResult, trainable_copy
from tasks.images import load_rgb_tensor, to_normalized
from tasks.synthetic import read_marker
from tasks.text import BERT_VOCAB_SIZE, ClipBpeTokenizer, Tokenizer, mask_tokens, pre_caption

# ALBEF normalises images with CLIP's statistics.
VL_MEAN = (0.48145466, 0.4578275, 0.40821073)
VL_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB_FILE = "vocab.txt"


def read_entries(path: Path, fields: dict[str, type | tuple[type, ...]]) -> list[dict[str, Any]]:
    """A JSON list of objects, each with `fields` of the given types; errors name file and index."""
    if not path.is_file():
        raise PelaBenchError(f"annotation file not found: {path}")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PelaBenchError(f"cannot read {path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise PelaBenchError(f"{path} must hold a non-empty JSON list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise PelaBenchError(f"{path} entry {i}: expected an object, got {type(entry).__name__}")
        for name, kind in fields.items():
            if name not in entry:
                raise PelaBenchError(f"{path} entry {i}: no '{name}' field")
            if not isinstance(entry[name], kind):
                raise PelaBenchError(f"{path} entry {i}: '{name}' has the wrong type ({type(entry[name]).__name__})")
        captions = entry.get("caption")
        if captions is not None:
            for c in captions if isinstance(captions, list) else [captions]:
                if not isinstance(c, str) or not pre_caption(c):
                    raise PelaBenchError(f"{path} entry {i}: an empty or non-text caption ({c!r})")
    return entries


def find_json(root: Path, suffix: str) -> Path:
    """The one ``*<suffix>`` file in `root` (``flickr30k_test.json``, ``retrieval_test.json``, ...)."""
    found = sorted(root.glob(f"*{suffix}"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise PelaBenchError(f"{root}: {what} '*{suffix}' file(s); expected exactly one")
    return found[0]


def image_path(root: Path, entry: dict[str, Any]) -> Path:
    path = Path(entry["image"])
    return path if path.is_absolute() else root / path


def check_images_exist(root: Path, entries: Iterable[dict[str, Any]]) -> None:
    """Every listed image is on disk (checked when the data loads, before any training)."""
    missing = sorted({str(image_path(root, e)) for e in entries if not image_path(root, e).is_file()})
    if missing:
        raise PelaBenchError(f"{root}: {len(missing)} image(s) listed but not found, e.g. {missing[0]}")


def load_tokenizer(root: Path, kind: str = "vocab") -> Tokenizer | ClipBpeTokenizer:
    """The backbone's tokenizer (`BackboneInfo.tokenizer`): open_clip's bundled BPE (``clip_bpe``), or the
    data root's ``vocab.txt`` (``vocab``), which for real data must be BERT's 30,522-entry WordPiece list."""
    if kind == "clip_bpe":
        return ClipBpeTokenizer()
    if kind != "vocab":
        raise PelaBenchError(f"unknown tokenizer {kind!r}; known: vocab, clip_bpe")
    path = root / VOCAB_FILE
    if not path.is_file():
        raise PelaBenchError(f"{root} has no {VOCAB_FILE}: put BERT's WordPiece vocabulary (bert-base-uncased, "
                             f"{BERT_VOCAB_SIZE} lines) there")
    synthetic = read_marker(root) is not None
    return Tokenizer.from_file(path, expect_size=None if synthetic else BERT_VOCAB_SIZE)


def image_transforms(img_size: int, synthetic: bool, train: bool) -> v2.Compose:
    """ALBEF's: random-resized crops (scale 0.5-1) and flips for training real images; a plain
    resize otherwise. Synthetic captions name positions ("on the left"), so those are never flipped or cropped.
    Images come as uint8 tensors (`tasks.images`)."""
    bicubic = v2.InterpolationMode.BICUBIC
    if train and not synthetic:
        return v2.Compose([v2.RandomResizedCrop(img_size, scale=(0.5, 1.0), interpolation=bicubic, antialias=True),
                           v2.RandomHorizontalFlip(), *to_normalized(VL_MEAN, VL_STD)])
    return v2.Compose([v2.Resize((img_size, img_size), interpolation=bicubic, antialias=True),
                       *to_normalized(VL_MEAN, VL_STD)])


@dataclass(frozen=True)
class TextSettings:
    max_words: int = 30
    max_tokens: int = 35  # padded length of every text tensor
    mlm_probability: float = 0.15


class CaptionPairs(Dataset):
    """(image, caption) pairs as dict samples. An entry whose caption is a list yields one
    caption drawn at random each time (ALBEF's pre-training loader); `image_ids` numbers images."""

    def __init__(self, root: Path, entries: list[dict[str, Any]], tokenizer: Tokenizer,
                 transform: Callable[[torch.Tensor], torch.Tensor],
                 text: TextSettings, image_ids: list[int] | None = None, mlm: bool = False) -> None:
        self.root, self.entries, self.tokenizer, self.transform = root, entries, tokenizer, transform
        self.text, self.image_ids, self.mlm = text, image_ids, mlm

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        caption = entry["caption"]
        if isinstance(caption, list):
            caption = caption[int(torch.randint(len(caption), ()))]
        sample = {"image": self.transform(load_rgb_tensor(image_path(self.root, entry)))}
        sample.update(encode_text(self.tokenizer, caption, self.text))
        if self.image_ids is not None:
            sample["image_id"] = self.image_ids[index]
        if self.mlm:
            sample["mlm_ids"], sample["mlm_labels"] = mask_tokens(sample["text_ids"], self.tokenizer,
                                                                  self.text.mlm_probability)
        return sample


def training_pairs(data: TaskData, text: TextSettings) -> CaptionPairs:
    """The training split's ``{image, caption, image_id}`` entries (``data.content.train``) as pairs whose
    images are numbered in order of first appearance: the captions of one image are ITC's positives."""
    d = data.content
    ids: dict[str, int] = {}
    image_ids = [ids.setdefault(str(e["image_id"]), len(ids)) for e in d.train]
    transform = image_transforms(d.img_size, data.provenance == "synthetic", train=True)
    return CaptionPairs(data.root, d.train, d.tokenizer, transform, text, image_ids=image_ids)


def encode_text(tokenizer: Tokenizer, caption: str, text: TextSettings) -> dict[str, torch.Tensor]:
    ids = tokenizer.encode(pre_caption(caption, text.max_words), text.max_tokens)
    text_ids, text_mask = tokenizer.pad(ids, text.max_tokens)
    return {"text_ids": text_ids, "text_mask": text_mask}


class ImageTexts(Dataset):
    """One sample per entry: its image, its text field `text_key` tokenised, and whatever `extra`
    adds from the entry and its index (labels, answers, the index itself)."""

    def __init__(self, root: Path, entries: list[dict[str, Any]], tokenizer: Tokenizer,
                 transform: Callable[[torch.Tensor], torch.Tensor],
                 text: TextSettings, text_key: str,
                 extra: Callable[[dict[str, Any], int], dict[str, Any]] | None = None) -> None:
        self.root, self.entries, self.tokenizer, self.transform = root, entries, tokenizer, transform
        self.text, self.text_key, self.extra = text, text_key, extra

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        sample = {"image": self.transform(load_rgb_tensor(image_path(self.root, e))),
                  **encode_text(self.tokenizer, e[self.text_key], self.text)}
        if self.extra is not None:
            sample.update(self.extra(e, index))
        return sample


class Images(Dataset):
    """Images alone (evaluation encodes every image once)."""

    def __init__(self, paths: list[Path], transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.transform(load_rgb_tensor(self.paths[index]))}


@dataclass(frozen=True)
class VLSchedule:
    """What every vision-language fine-tune's schedule has; each task adds its own fields."""

    epochs: float
    lr: float
    batch_size: int
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    eval_batch_size: int = 64
    text: TextSettings = field(default_factory=TextSettings)
    synthetic_train: int = 0  # scenes written for the embedded world
    synthetic_test: int = 0
    latency_repeats: int = 20


def check_vocabulary(model: Any, tokenizer: Tokenizer) -> None:
    """The task's text must use the vocabulary the model was pre-trained with (at most as many tokens)."""
    known = model.text_vocab_size()
    if len(tokenizer) > known:
        raise PelaBenchError(f"{tokenizer.source} has {len(tokenizer)} tokens but the model knows {known}: "
                             "pre-training and task data must share one vocabulary")


def fine_tune(model: Any, objective: str, dataset: Dataset, schedule: VLSchedule, ctx: RunContext, task: str
              ) -> tuple[dict[str, Any], float]:
    """Fine-tune `model` whole on its own objective `objective` with the suite's trainer (resumable).

    Returns the row's fine-tune details (batch, last epoch's loss terms) and the seconds it took."""
    if ctx.fit is None:
        raise PelaBenchError(f"{task} fine-tunes with the suite's trainer: RunContext.fit must be set")

    def loss(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms = model.objective_terms(objective, batch)
        return {"loss": torch.stack(list(terms.values())).sum(), **{k: v.detach() for k, v in terms.items()}}

    batch = ctx.train_batch or schedule.batch_size
    start = time.time()
    history = ctx.fit(model, loss, dataset, epochs=schedule.epochs, lr=schedule.lr, batch_size=batch,
                      weight_decay=schedule.weight_decay, warmup_epochs=schedule.warmup_epochs,
                      desc=f"{task} fine-tune ({batch}/step)")
    details = {"train_batch": batch, "work_dir": str(ctx.work_dir), "loss_terms": history[-1] if history else {}}
    return details, time.time() - start


class Scorer(nn.Module):
    """What a task's efficiency columns time and count: `fn(model, **inputs)` as a module's forward
    (the parameters counted are the whole model's, momentum copies included, as the paper counts)."""

    def __init__(self, model: nn.Module, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.model, **inputs)


def random_text(batch_size: int, length: int, vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"text_ids": torch.randint(vocab, (batch_size, length), generator=generator),
            "text_mask": torch.ones(batch_size, length, dtype=torch.long)}


class VLTask(Task):
    """What the vision-language tasks share: the backbone check, the tokenizer it reads text with, and
    the vocabulary size it hands the backbone."""

    # Whether the task needs a fusion encoder (cross-attention from text to image: ALBEF), or
    # works on any backbone with a text tower (a dual encoder such as CLIP).
    needs_fusion: ClassVar[bool] = True
    tokenizer_kind: str = "vocab"
    # The JSON files `--data NAME=DIR` must hold (each suffix matched by exactly one file).
    json_files: ClassVar[tuple[str, ...]] = ("_train.json", "_test.json")
    # The synthetic scene world the task's writer describes, and the writer:
    # ``writer(root, seed=, n_train=, n_test=, world=, progress=)``.
    world: ClassVar[Callable[[int], Any] | None] = None
    writer: ClassVar[Callable[..., Path] | None] = None

    def synthetic_spec(self, schedule: Any, img_size: int | None) -> dict[str, Any]:
        from tasks import synthetic as scenes, synthetic_vl

        size = img_size or 64
        return {"n_train": schedule.synthetic_train, "n_val": schedule.synthetic_test, "img_size": size,
                "world": asdict(type(self).world(size)), "writer": synthetic_vl.VL_WRITER_VERSION,
                "generator": scenes.GENERATOR_VERSION}

    def write_synthetic(self, root: Path, spec: dict[str, Any], seed: int, progress: bool) -> None:
        from tasks.synthetic import WorldConfig

        world = WorldConfig.from_dict({**spec["world"], "img_size": spec["img_size"]})
        type(self).writer(root, seed=seed, n_train=spec["n_train"], n_test=spec["n_val"], world=world,
                          progress=progress)

    def check_root(self, root: Path) -> None:
        if not Path(root).is_dir():
            raise PelaBenchError(f"--data {self.name}={root} does not exist ({self.layout})")
        for suffix in self.json_files:
            find_json(Path(root), suffix)

    def check_backbone(self, info: Any) -> None:
        groups = set(info.feature_groups)
        if "text" not in groups:
            raise PelaBenchError(f"task {self.name!r} needs a vision-language backbone (albef_*, clip_*); "
                                 f"{info.name} has no text encoder")
        if self.needs_fusion and "fusion" not in groups:
            raise PelaBenchError(f"task {self.name!r} needs a fusion encoder (text cross-attending to the image, "
                                 f"albef_*); {info.name} is a dual encoder")

    def bind(self, info: Any) -> None:
        self.tokenizer_kind = info.tokenizer

    def tokenizer(self, root: Path) -> Tokenizer | ClipBpeTokenizer:
        return load_tokenizer(root, self.tokenizer_kind)

    def backbone_overrides(self, data: TaskData) -> dict[str, Any]:
        return {"vocab_size": len(data.content.tokenizer)}


class FineTunedVLTask(VLTask):
    """A vision-language task that fine-tunes the whole student on the model's own objective, then scores
    it: the one `run` and the one Table 9 training step (`train_step`) of retrieval, VQA, SNLI-VE and
    grounding. Each task says what its model is, what it trains on, and how it is scored."""

    fine_tunes = True

    def task_model(self, student: nn.Module) -> nn.Module:
        """The model the task fine-tunes, built on a trainable copy of the student (a head attached,
        unused heads dropped); called with the RNG seeded, so new heads do not depend on earlier stages."""
        return student

    def train_objective(self, model: nn.Module) -> str:
        """The name of the model's objective the task fine-tunes with (`objective_terms(name, batch)`)."""
        raise NotImplementedError

    def train_set(self, data: TaskData, schedule: Any) -> Dataset:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: TaskData, schedule: Any, device: torch.device,
                 workers: int = 0) -> dict[str, float]:
        raise NotImplementedError

    def row_details(self, model: nn.Module, schedule: Any) -> dict[str, Any]:
        """What the row records beyond the schedule and the data audit (the Grad-CAM layer, ...)."""
        return {}

    def _build(self, student: nn.Module, data: TaskData, seed: int | None, device: torch.device) -> nn.Module:
        check_vocabulary(student, data.content.tokenizer)
        if seed is not None:
            torch.manual_seed(seed)
        return self.task_model(trainable_copy(student)).to(device)

    def run(self, student: nn.Module, data: TaskData, schedule: Any, ctx: RunContext) -> TaskResult:
        model = self._build(student, data, ctx.seed, ctx.device)
        details, seconds = fine_tune(model, self.train_objective(model), self.train_set(data, schedule), schedule,
                                     ctx, self.name)
        metrics = self.evaluate(model, data, schedule, ctx.device, ctx.workers)
        details.update(schedule=asdict(schedule), data_audit=data.audit, **self.row_details(model, schedule))
        return TaskResult(metrics, model.eval(), seconds, details)

    def train_step(self, student: nn.Module, data: TaskData, schedule: Any, batch: int,
                   device: torch.device) -> tuple[nn.Module, Callable[[], None]]:
        """The task's model and one forward + backward of its fine-tune objective on `batch` training samples."""
        model = self._build(student, data, None, device).train()  # the caller has seeded
        dataset = self.train_set(data, schedule)
        if len(dataset) < batch:
            raise PelaBenchError(f"{self.name}: {len(dataset)} training samples, fewer than the batch of {batch} "
                                 "whose training memory is to be measured")
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        sample = move_to(next(iter(loader)), device)
        objective = self.train_objective(model)

        def step() -> None:
            terms = model.objective_terms(objective, sample)
            torch.stack(list(terms.values())).sum().backward()
            model.zero_grad(set_to_none=True)

        return model, step

    # -- efficiency ------------------------------------------------------------------------------
    def example_inputs(self, data: TaskData, schedule: Any, model: nn.Module, batch_size: int
                       ) -> dict[str, torch.Tensor]:
        """An image and a text of the schedule's length (random values); tasks that score more add to it."""
        size = data.content.img_size
        g = torch.Generator().manual_seed(0)
        return {"image": torch.randn(batch_size, 3, size, size, generator=g),
                **random_text(batch_size, schedule.text.max_tokens, len(data.content.tokenizer), g)}

    def input_size(self, schedule: Any, data: TaskData) -> int:
        return data.content.img_size

    def describe_schedule(self, schedule: Any, batch: int | None = None) -> str:
        k_test = f", k_test {schedule.k_test}" if hasattr(schedule, "k_test") else ""
        return f"{schedule.epochs} epochs, batch {batch or schedule.batch_size}{k_test}"
