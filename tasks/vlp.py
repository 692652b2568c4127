"""Vision-language pre-training on image-caption pairs: the teacher's training and PELA's
intermediate pre-training for ALBEF-style backbones (``BackboneInfo.pretrain_task = "vlp"``).

It has no rows of its own. Data: every ``<root>/annotations/*.json`` is a list of
``{"image": path, "caption": text or [texts]}`` (ALBEF's pre-training files: COCO,
VG, CC3M, SBU, ...), image paths relative to the root, plus ``<root>/vocab.txt``. The objective is the backbone's own (`ModelObjective("vlp")`:
ITC + ITM + MLM for ALBEF).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset, Dataset

from common.errors import PelaBenchError
from common.objective import ModelObjective
from tasks.base import TaskData, check_files, register_task
from tasks.synthetic import WorldConfig, read_marker
from tasks import synthetic as scenes, synthetic_vl
from tasks.synthetic_vl import caption_world, grounding_world, write_pretraining
from tasks.vl_data import (CaptionPairs, TextSettings, VLTask, check_images_exist, image_path, image_transforms,
                           read_entries)
from tasks.text import Tokenizer


@dataclass(frozen=True)
class PretrainSchedule:
    synthetic_train: int
    synthetic_regions: int = 0  # multi-object scenes described object by object (Visual Genome's role)
    text: TextSettings = field(default_factory=TextSettings)


@dataclass(frozen=True)
class PretrainData:
    files: list[Path]
    entries: list[list[dict[str, Any]]]
    tokenizer: Tokenizer
    text: TextSettings
    img_size: int


@register_task
class VLPretraining(VLTask):
    name = "vlp"
    needs_fusion = False
    masked_language = True  # samples carry masked text for an MLM objective (a fusion encoder's)
    aliases = ("pretrain_vl",)
    layout = "ALBEF pre-training JSON: <root>/annotations/*.json, lists of {image, caption}; <root>/vocab.txt"
    schedules = {
        "tiny": PretrainSchedule(synthetic_train=64, synthetic_regions=32, text=TextSettings(max_tokens=20)),
        "smoke": PretrainSchedule(synthetic_train=1500, synthetic_regions=500, text=TextSettings(max_tokens=20)),
        "paper": PretrainSchedule(synthetic_train=40_000, synthetic_regions=10_000),
    }

    def bind(self, info: Any) -> None:
        super().bind(info)
        self.masked_language = "fusion" in info.feature_groups  # ALBEF's MLM; CLIP has none

    def synthetic_spec(self, schedule: PretrainSchedule, img_size: int | None) -> dict[str, Any]:
        size = img_size or 64
        spec = {"n_train": schedule.synthetic_train, "img_size": size, "world": asdict(caption_world(size)),
                "writer": synthetic_vl.VL_WRITER_VERSION, "generator": scenes.GENERATOR_VERSION}
        if schedule.synthetic_regions:
            spec.update(n_regions=schedule.synthetic_regions, region_world=asdict(grounding_world(size)))
        return spec

    def write_synthetic(self, root: Path, spec: dict[str, Any], seed: int, progress: bool) -> None:
        def world(key: str) -> WorldConfig | None:
            return WorldConfig.from_dict({**spec[key], "img_size": spec["img_size"]}) if key in spec else None

        write_pretraining(root, seed=seed, n_train=spec["n_train"], n_regions=spec.get("n_regions", 0),
                          world=world("world"), region_world=world("region_world"), progress=progress)

    def check_root(self, root: Path) -> None:
        if not Path(root).is_dir():
            raise PelaBenchError(f"--data {self.name}={root} does not exist ({self.layout})")

    def load(self, root: Path, schedule: PretrainSchedule, img_size: int | None) -> TaskData:
        root = Path(root)
        self.check_root(root)
        files = sorted((root / "annotations").glob("*.json"))
        if not files:
            raise PelaBenchError(f"--data {self.name}={root}: no annotations/*.json file ({self.layout})")
        entries = [read_entries(f, {"image": str, "caption": (str, list)}) for f in files]
        check_images_exist(root, (e for es in entries for e in es))
        synthetic = read_marker(root) is not None
        data = PretrainData(files, entries, self.tokenizer(root), schedule.text, img_size or 224)
        audit = {"pairs": sum(len(es) for es in entries), "files": len(files)}
        return TaskData(root, "synthetic" if synthetic else "real", data, audit)

    def check_data(self, data: TaskData, progress: bool = True) -> dict[str, int]:
        paths = sorted({image_path(data.root, e) for es in data.content.entries for e in es})
        return {"images": check_files(paths, "checking pre-training images", progress)}

    def objective(self) -> ModelObjective:
        return ModelObjective("vlp")

    def train_split(self, data: TaskData) -> Dataset:
        d: PretrainData = data.content
        transform = image_transforms(d.img_size, data.provenance == "synthetic", train=True)
        return ConcatDataset([CaptionPairs(data.root, es, d.tokenizer, transform, d.text, mlm=self.masked_language)
                              for es in d.entries])

