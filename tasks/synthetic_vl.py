"""The synthetic scene world in words: captions, written in ALBEF's JSON formats.

Each scene (`tasks.synthetic.render_scene`) gets five captions that describe its
subject: colour, fill pattern, outline, size, position, and how many other shapes
share the picture. Each caption says only part of that, in one of several
templates, so some captions fit several images (retrieval at rank 1 stays below
100 %) while most pin the image down. The words form a closed, word-level
vocabulary written as ``vocab.txt`` beside the data.

Formats (paths in the JSON are relative to the data root):

- pre-training (``vlp``): ``annotations/vlp_train.json``, ``[{"image": ..., "caption": [five captions]}]``
  (ALBEF's pre-training loader takes a list and draws one caption per epoch);
- retrieval (``retrieval``): ``retrieval_train.json`` with one entry per caption,
  ``{"image", "caption", "image_id"}``, and ``retrieval_{val,test}.json`` with one
  entry per image, ``{"image", "caption": [five]}``, as ALBEF's Flickr30K files.
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
_SIZES = ("small", "large")
_COUNTS = ("no", "one", "two", "three", "four")
_TEMPLATES = (
    "a {size} {colour} {pattern} {shape} {where}",
    "there is a {colour} {shape} {where} with {others}",
    "{colour} {pattern} {shape}",
    "a picture of a {pattern} {shape} in {colour}",
    "the {shape} {where} is {colour} and {pattern}",
    "a {pattern} {colour} shape {where}",
    "a {size} {colour} {shape} and {others}",
)
_FILLER = ("a", "picture", "of", "there", "is", "with", "other", "shapes", "shape", "the", "in", "and", "at", "on",
           "next", "to", "small", "large", "middle", "left", "right", "top", "bottom", "centre")


def vocabulary(world: WorldConfig) -> list[str]:
    """Every word a caption can use, after the special tokens (deterministic order)."""
    words = [*world.colours, *world.patterns, *world.shapes, *_SIZES, *_COUNTS, *_FILLER]
    return [*SPECIAL_TOKENS, *dict.fromkeys(words)]


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


def _scenes(root: Path, split: str, count: int, seed: int, world: WorldConfig, progress: bool
            ) -> list[dict[str, Any]]:
    from tqdm import tqdm

    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in tqdm(range(count), desc=f"synthetic {split}", disable=not progress, leave=False):
        image, objects = render_scene(seed, split, i, world)
        path = folder / f"{i:06d}.png"
        image.save(path)
        captions = describe(objects, world, _rng(seed, f"{split}-captions", i))
        entries.append({"image": str(path.relative_to(root)), "caption": captions, "image_id": f"{split}-{i}"})
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


def write_pretraining(root: str | Path, *, seed: int = 0, n_train: int = 1000, world: WorldConfig | None = None,
                      progress: bool = True) -> Path:
    root = Path(root)
    world = world or caption_world()
    entries = _scenes(root, "vlp-train", n_train, seed, world, progress)
    atomic_write_text(root / "annotations" / "vlp_train.json", json.dumps([{"image": e["image"], "caption": e["caption"]}
                                                           for e in entries]))
    _finish(root, "vlp", seed, world, {"train": n_train})
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
