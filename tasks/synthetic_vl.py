"""The synthetic scene world in words: captions, written in ALBEF's JSON formats.

Each scene (`tasks.synthetic.render_scene`) gets five captions that describe its
subject: colour, fill pattern, shape, size, position, and how many other shapes
share the picture. Each caption names the colour, fill and shape and, in one of
several templates, the position or the size and company, so a caption seldom fits
another image of a batch but can fit several of a test set (retrieval at rank 1
stays below 100 %). The words form a closed, word-level
vocabulary written as ``vocab.txt`` beside the data.

Formats (paths in the JSON are relative to the data root):

- pre-training (``vlp``): ``annotations/vlp_train.json``, ``[{"image": ..., "caption": [five captions]}]``
  (ALBEF's pre-training loader takes a list and draws one caption per epoch), and
  ``annotations/vlp_regions.json``, scenes of several objects with one caption per object (the
  synthetic counterpart of Visual Genome's region descriptions in ALBEF's corpus);
- retrieval (``retrieval``): ``retrieval_train.json`` with one entry per caption,
  ``{"image", "caption", "image_id"}``, and ``retrieval_{val,test}.json`` with one
  entry per image, ``{"image", "caption": [five]}``, as ALBEF's Flickr30K files;
- VQA (``vqa``): ``vqa_{train,test}.json``, ``{"question_id", "image", "question", "answer": [ten
  annotators' answers]}``, and ``answer_list.json``, as ALBEF's VQAv2 files (its test split
  carries answers here so that it can be scored locally, like VQAv2's validation split);
- SNLI-VE (``ve``): ``ve_{train,test}.json``, ``{"image", "sentence", "label"}`` with labels
  ``entailment``, ``neutral``, ``contradiction``, one of each per scene;
- grounding (``grounding``): ``grounding_train.json``, ``{"image", "caption", "image_id"}`` per
  referring expression (image-level pairs only: the training is weakly supervised), and
  ``grounding_test.json``, ``{"image", "text", "ref_id", "bbox", "proposals"}`` (boxes
  ``[x, y, w, h]``; the proposals every object's box and one background box).

All the vision-language writers share one vocabulary, so one pre-trained model reads them all.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write_text
from tasks.synthetic import GENERATOR_VERSION, MARKER_FILE, SceneObject, WorldConfig, _rng, render_scene
from tasks.text import SPECIAL_TOKENS, Tokenizer

CAPTIONS_PER_IMAGE = 5
# Part of every vision-language data stage's spec: bump it when a writer's output changes, so a
# reused `--out` regenerates the data instead of reusing what an older writer wrote.
VL_WRITER_VERSION = 3
_SIZES = ("small", "large")
_COUNTS = ("no", "one", "two", "three", "four")
# Every template names the subject's colour, fill and shape, and its position or its size and
# company. Why so specific: ALBEF's ITM negatives are the batch's most similar other captions, and
# a caption that also fits another image of the batch becomes a "no match" label for a pair that
# matches. With three attributes of 4 x 4 x 4 (an earlier template set), about one other image
# in a batch of 64 fitted such a caption, and the teacher's ITM never left the class prior
# (0.61 nats against 0.64 after 20 epochs; a matching pair scored p = 0.37, a shuffled one 0.31).
_TEMPLATES = (
    "a {size} {colour} {pattern} {shape} {where}",
    "there is a {colour} {pattern} {shape} {where} with {others}",
    "{colour} {pattern} {shape} {where}",
    "a picture of a {size} {pattern} {shape} in {colour} with {others}",
    "the {shape} {where} is {colour} and {pattern}",
    "a {pattern} {colour} {shape} {where}",
    "a {size} {colour} {pattern} {shape} and {others}",
)
_FILLER = ("a", "picture", "of", "there", "is", "with", "other", "shapes", "shape", "the", "in", "and", "at", "on",
           "next", "to", "small", "large", "middle", "left", "right", "top", "bottom", "centre")
# Questions, unverifiable claims (SNLI-VE's neutral hypotheses) and referring expressions.
_QUESTION_WORDS = ("what", "colour", "pattern", "does", "have", "which", "yes", "no", "that")
NEUTRAL_WORDS = ("heavy", "wooden", "expensive", "famous", "old", "new")


def vocabulary(world: WorldConfig) -> list[str]:
    """Every word a caption can use, after the special tokens (deterministic order)."""
    words = [*world.colours, *world.patterns, *world.shapes, *_SIZES, *_COUNTS, *_FILLER, *_QUESTION_WORDS,
             *NEUTRAL_WORDS]
    return [*SPECIAL_TOKENS, *dict.fromkeys(words)]


_PLACES = ("on the left", "on the right", "at the top", "at the bottom", "in the middle", "at the top left",
           "at the top right", "at the bottom left", "at the bottom right")


def _where(obj: SceneObject, img_size: int) -> str:
    cx, cy = obj.centre
    col = ("left", "centre", "right")[min(2, int(3 * cx / img_size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / img_size))]
    if col == "centre" and row == "middle":
        return "in the middle"
    if row == "middle":
        return f"on the {col}"
    if col == "centre":
        return f"at the {row}"
    return f"at the {row} {col}"


def describe(objects: list[SceneObject], world: WorldConfig, rng: np.random.Generator) -> list[str]:
    """Five different captions of a scene's subject (the first object)."""
    subject, others = objects[0], len(objects) - 1
    size = "large" if subject.radius / world.img_size > 0.5 * sum(world.subject_size) / 2 else "small"
    count = _COUNTS[min(others, len(_COUNTS) - 1)]
    slots = {"size": size, "colour": subject.colour, "pattern": subject.pattern, "shape": subject.shape,
             "where": _where(subject, world.img_size),
             "others": f"{count} other {'shape' if others == 1 else 'shapes'}"}
    picks = rng.choice(len(_TEMPLATES), size=CAPTIONS_PER_IMAGE, replace=False)
    return [_TEMPLATES[i].format(**slots) for i in picks]


def _scenes(root: Path, split: str, count: int, seed: int, world: WorldConfig, progress: bool,
            keep_objects: bool = False) -> list[dict[str, Any]]:
    """Render and save `count` scenes; each entry has its image path, five captions and image id
    (and, with `keep_objects`, its index and objects, for the writers that ask about them)."""
    from tqdm import tqdm

    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in tqdm(range(count), desc=f"synthetic {split}", disable=not progress, leave=False):
        image, objects = render_scene(seed, split, i, world)
        path = folder / f"{i:06d}.png"
        image.save(path)
        captions = describe(objects, world, _rng(seed, f"{split}-captions", i))
        entry = {"image": str(path.relative_to(root)), "caption": captions, "image_id": f"{split}-{i}"}
        if keep_objects:
            entry.update(index=i, objects=objects)
        entries.append(entry)
    return entries


def _finish(root: Path, task: str, seed: int, world: WorldConfig, counts: dict[str, int]) -> None:
    Tokenizer(vocabulary(world)).save(root / "vocab.txt")
    marker = {"provenance": "synthetic", "task": task, "format": "albef-json", "generator_version": GENERATOR_VERSION,
              "seed": seed, "counts": counts, "world": asdict(world)}
    atomic_write_text(root / MARKER_FILE, json.dumps(marker, indent=2))  # last: a finished folder


def caption_world(img_size: int = 64) -> WorldConfig:
    """The world the vision-language tasks describe: a larger subject, at most one distractor,
    less colour jitter and noise than the classification world.

    A text and fusion stack trained from scratch (ALBEF starts from pre-trained BERT and
    DeiT) sits on a plateau before image-text matching starts; on the classification
    world it had not left it after 6 epochs of 2,000 pairs, on this one it leaves it after about 5.
    """
    return WorldConfig(img_size=img_size, subject_size=(0.45, 0.65), distractors=(0, 1), hue_jitter=20.0,
                       noise_std=5.0)


def write_pretraining(root: str | Path, *, seed: int = 0, n_train: int = 1000, n_regions: int = 0,
                      world: WorldConfig | None = None, region_world: WorldConfig | None = None,
                      progress: bool = True) -> Path:
    """Captioned scenes (``annotations/vlp_train.json``), and, as Visual Genome's region descriptions are
    in ALBEF's pre-training corpus, `n_regions` scenes of several objects whose captions each describe one
    of them (``annotations/vlp_regions.json``, the grounding world's referring expressions)."""
    root = Path(root)
    world = world or caption_world()
    entries = _scenes(root, "vlp-train", n_train, seed, world, progress)
    atomic_write_text(root / "annotations" / "vlp_train.json", json.dumps([{"image": e["image"], "caption": e["caption"]}
                                                           for e in entries]))
    if n_regions:
        regions = []
        for e in _scenes(root, "vlp-regions", n_regions, seed, region_world or grounding_world(world.img_size),
                         progress, keep_objects=True):
            described = refer(e["objects"], _rng(seed, "vlp-regions-refs", int(e["index"])))
            if described:
                regions.append({"image": e["image"], "caption": [text for _, text in described]})
        atomic_write_text(root / "annotations" / "vlp_regions.json", json.dumps(regions))
    _finish(root, "vlp", seed, world, {"train": n_train, "regions": n_regions})
    return root


def write_retrieval(root: str | Path, *, seed: int = 0, n_train: int = 1000, n_val: int = 100, n_test: int = 100,
                    world: WorldConfig | None = None, progress: bool = True) -> Path:
    root = Path(root)
    world = world or caption_world()
    train = _scenes(root, "ret-train", n_train, seed, world, progress)
    per_caption = [{"image": e["image"], "caption": c, "image_id": e["image_id"]} for e in train for c in e["caption"]]
    atomic_write_text(root / "retrieval_train.json", json.dumps(per_caption))
    for split, count in (("val", n_val), ("test", n_test)):
        entries = _scenes(root, f"ret-{split}", count, seed, world, progress)
        atomic_write_text(root / f"retrieval_{split}.json",
                          json.dumps([{"image": e["image"], "caption": e["caption"]} for e in entries]))
    _finish(root, "retrieval", seed, world, {"train": n_train, "val": n_val, "test": n_test})
    return root


# -- VQA -----------------------------------------------------------------------------------------
ANNOTATORS = 10  # answers per question, as VQAv2 collects them
QUESTIONS_PER_IMAGE = 3


def answer_space(world: WorldConfig) -> dict[str, list[str]]:
    """Every answer each question type can have (the candidate list is their union)."""
    return {"colour": list(world.colours), "pattern": list(world.patterns), "shape": list(world.shapes),
            "yesno": ["yes", "no"]}


def ask(objects: list[SceneObject], world: WorldConfig, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """Questions about a scene's subject as (type, question, true answer), `QUESTIONS_PER_IMAGE` different types.

    No "how many" or "where" questions: in this world the answer prior settles them (the subject
    is large and mostly central, with at most one faint distractor; a question-only guess scored
    64 % and 62 % on them, as well as a trained model), so they would only dilute what VQA measures."""
    subject = objects[0]
    same_shape = any(o.shape == subject.shape for o in objects[1:])
    the = f"the large {subject.shape}" if same_shape else f"the {subject.shape}"
    other_colour = str(rng.choice([c for c in world.colours if c != subject.colour]))
    asked_colour = subject.colour if rng.random() < 0.5 else other_colour
    questions = {
        "colour": (f"what colour is {the}", subject.colour),
        "pattern": (f"what pattern does the large {subject.colour} shape have", subject.pattern),
        "shape": (f"which shape is {subject.colour} and {subject.pattern}", subject.shape),
        "yesno": (f"is {the} {asked_colour}", "yes" if asked_colour == subject.colour else "no"),
    }
    kinds = list(questions)
    picks = rng.choice(len(kinds), size=QUESTIONS_PER_IMAGE, replace=False)
    return [(kinds[i], *questions[kinds[i]]) for i in picks]


def annotate(kind: str, truth: str, space: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    """Ten annotators' answers: nine in ten give the true one, the others a random answer of the same type
    (so some questions score below 1 under the VQA rule, as real ones do)."""
    return [truth if rng.random() < 0.9 else str(rng.choice(space[kind])) for _ in range(ANNOTATORS)]


def write_vqa(root: str | Path, *, seed: int = 0, n_train: int = 1000, n_test: int = 200,
              world: WorldConfig | None = None, progress: bool = True) -> Path:
    root = Path(root)
    world = world or caption_world()
    space = answer_space(world)
    qid = 0
    for split, count in (("train", n_train), ("test", n_test)):
        entries = []
        for e in _scenes(root, f"vqa-{split}", count, seed, world, progress, keep_objects=True):
            rng = _rng(seed, f"vqa-{split}-questions", int(e["index"]))
            for kind, question, truth in ask(e["objects"], world, rng):
                entries.append({"question_id": qid, "image": e["image"], "question": question,
                                "answer": annotate(kind, truth, space, rng), "dataset": "vqa"})
                qid += 1
        atomic_write_text(root / f"vqa_{split}.json", json.dumps(entries))
    answers = list(dict.fromkeys(a for values in space.values() for a in values))
    atomic_write_text(root / "answer_list.json", json.dumps(answers))
    _finish(root, "vqa", seed, world, {"train": n_train, "test": n_test})
    return root


# -- SNLI-VE ---------------------------------------------------------------------------------------
VE_LABELS = ("entailment", "neutral", "contradiction")


def hypotheses(objects: list[SceneObject], world: WorldConfig, rng: np.random.Generator) -> list[tuple[str, str]]:
    """One entailed, one neutral and one contradicted hypothesis about the subject.

    Neutral hypotheses state true attributes plus a claim the picture cannot settle
    (``heavy``, ``wooden``, ...); contradictions change one visible attribute, in either
    kind of sentence. So neither the sentence alone (the unverifiable words appear in
    contradictions too) nor the image alone decides the label.
    """
    subject = objects[0]
    slots = {"colour": subject.colour, "pattern": subject.pattern, "shape": subject.shape,
             "where": _where(subject, world.img_size), "claim": str(rng.choice(NEUTRAL_WORDS))}
    facts = ("the {shape} is {colour}", "the {colour} shape is {pattern}", "there is a {colour} {pattern} {shape}",
             "the {colour} {shape} is {where}")
    neutral = ("the {colour} {shape} is {claim}", "the {pattern} shape is {claim}", "there is a {claim} {colour} {shape}")
    values = {"colour": world.colours, "pattern": world.patterns, "shape": world.shapes, "where": _PLACES}

    def corrupt(template: str) -> str:
        slot = str(rng.choice([k for k in values if "{" + k + "}" in template]))
        wrong = str(rng.choice([v for v in values[slot] if v != slots[slot]]))
        return template.format(**{**slots, slot: wrong})

    contradiction = corrupt(str(rng.choice(facts if rng.random() < 0.5 else neutral)))
    out = [(str(rng.choice(facts)).format(**slots), "entailment"),
           (str(rng.choice(neutral)).format(**slots), "neutral"), (contradiction, "contradiction")]
    return [out[i] for i in rng.permutation(3)]


def write_entailment(root: str | Path, *, seed: int = 0, n_train: int = 1000, n_test: int = 200,
                     world: WorldConfig | None = None, progress: bool = True) -> Path:
    root = Path(root)
    world = world or caption_world()
    for split, count in (("train", n_train), ("test", n_test)):
        entries = []
        for e in _scenes(root, f"ve-{split}", count, seed, world, progress, keep_objects=True):
            rng = _rng(seed, f"ve-{split}-hypotheses", int(e["index"]))
            entries += [{"image": e["image"], "sentence": h, "label": label}
                        for h, label in hypotheses(e["objects"], world, rng)]
        atomic_write_text(root / f"ve_{split}.json", json.dumps(entries))
    _finish(root, "ve", seed, world, {"train": n_train, "test": n_test})
    return root


# -- weakly supervised grounding -------------------------------------------------------------------
def grounding_world(img_size: int = 64) -> WorldConfig:
    """Three or four vivid objects of similar size, so an expression must pick one of several.

    Why this many, this small: with two or three objects of 0.26-0.36 of the image, a map that
    only roughly found the right region picked the right box, and plain SVD grounded as well as
    the uncompressed model (41.3 against 41.6 %). On a 64-px image with 8-px patches these
    objects are 2-3 patches wide, so the Grad-CAM map must be sharp to pick the right one.
    """
    return WorldConfig(img_size=img_size, subject_size=(0.2, 0.28), distractor_size=(0.2, 0.28),
                       distractors=(2, 3), distractor_saturation=(0.55, 1.0), hue_jitter=20.0, noise_std=5.0)


_EXPRESSIONS = ("the {colour} {pattern} {thing}", "a {thing} that is {colour} and {pattern}",
                "the {pattern} {colour} {thing}")


def refer(objects: list[SceneObject], rng: np.random.Generator) -> list[tuple[int, str]]:
    """(object index, expression) for every object that colour and pattern, or with the shape too, single out."""
    out = []
    for i, obj in enumerate(objects):
        twins = [o for j, o in enumerate(objects) if j != i and (o.colour, o.pattern) == (obj.colour, obj.pattern)]
        if any(o.shape == obj.shape for o in twins):
            continue  # no expression in this world picks it out
        thing = obj.shape if twins or rng.random() < 0.5 else "shape"
        template = str(rng.choice(_EXPRESSIONS))
        out.append((i, template.format(colour=obj.colour, pattern=obj.pattern, thing=thing)))
    return out


def _iou(a: list[list[float]], b: list[list[float]]) -> Any:
    """Pairwise IoU (a torch tensor) of two lists of ``[x, y, w, h]`` boxes."""
    import torch
    from torchvision.ops import box_convert, box_iou

    return box_iou(box_convert(torch.tensor(a), "xywh", "xyxy"), box_convert(torch.tensor(b), "xywh", "xyxy"))


def _xywh(box: tuple[float, float, float, float], size: int) -> list[float]:
    x0, y0, x1, y1 = (max(0.0, min(float(size), v)) for v in box)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def write_grounding(root: str | Path, *, seed: int = 0, n_train: int = 1000, n_test: int = 200,
                    world: WorldConfig | None = None, progress: bool = True) -> Path:
    root = Path(root)
    world = world or grounding_world()
    train = []
    for e in _scenes(root, "ground-train", n_train, seed, world, progress, keep_objects=True):
        rng = _rng(seed, "ground-train-refs", int(e["index"]))
        train += [{"image": e["image"], "caption": text, "image_id": e["image_id"]} for _, text in refer(e["objects"], rng)]
    atomic_write_text(root / "grounding_train.json", json.dumps(train))
    test, ref = [], 0
    size = world.img_size
    for e in _scenes(root, "ground-test", n_test, seed, world, progress, keep_objects=True):
        rng = _rng(seed, "ground-test-refs", int(e["index"]))
        boxes = [_xywh(o.bbox, size) for o in e["objects"]]
        overlap = _iou(boxes, boxes)
        background = None
        for _ in range(20):  # a proposal on the background, apart from every object
            w, h = rng.uniform(0.2, 0.4, size=2) * size
            box = [round(float(rng.uniform(0, size - w)), 2), round(float(rng.uniform(0, size - h)), 2),
                   round(float(w), 2), round(float(h), 2)]
            if float(_iou([box], boxes).max()) < 0.3:
                background = box
                break
        proposals = [*boxes, *([background] if background else [])]
        for i, text in refer(e["objects"], rng):
            # A target whose box another object's box overlaps by IoU >= 0.5 cannot be told apart by the metric.
            if any(float(overlap[i, j]) >= 0.5 for j in range(len(boxes)) if j != i):
                continue
            test.append({"image": e["image"], "text": text, "ref_id": ref, "bbox": boxes[i], "proposals": proposals})
            ref += 1
    atomic_write_text(root / "grounding_test.json", json.dumps(test))
    _finish(root, "grounding", seed, world, {"train": n_train, "test": n_test})
    return root
