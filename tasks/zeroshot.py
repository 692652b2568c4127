"""Zero-shot classification with a contrastive vision-language model (CLIP's protocol).

No training: every class name, put in each prompt template, is encoded by the text
tower; a class's embedding is the normalised mean over its prompts, and an image is
assigned the class whose embedding is most similar to its own. Metrics: top-1 and
top-5 accuracy. It measures what the contrastive pre-training (and each method's
compression of it) kept, with no fine-tune to hide a loss.

Data root: the classification layout, ``<root>/val/<class>/<image>`` (only ``val`` is
read), an optional ``classnames.txt`` (one readable name per class folder, in sorted
folder order: ImageNet's folders are WordNet ids), and, for backbones that read text
with the data's vocabulary, ``vocab.txt``. The embedded world's folders are its classes
(``red_striped`` -> "red striped"), described with the captions' own words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from common.errors import PelaBenchError
from tasks.base import Metric, RunContext, TaskData, TaskResult, check_files, register_task
from tasks.classification import image_folder
from tasks.synthetic import WorldConfig, read_marker, write_classification
from tasks import synthetic_vl
from tasks.synthetic_vl import caption_world, vocabulary
from tasks.text import Tokenizer
from tasks.vl_data import VOCAB_FILE, Scorer, TextSettings, VLTask, check_vocabulary, encode_text, image_transforms

CLASSNAMES_FILE = "classnames.txt"


@dataclass(frozen=True)
class ZeroShotSchedule:
    prompts: tuple[str, ...]  # templates with one "{}" for the class name
    synthetic_val: int
    eval_batch_size: int = 64
    text: TextSettings = field(default_factory=TextSettings)
    latency_repeats: int = 20


@dataclass(frozen=True)
class ZeroShotData:
    val: Any  # an ImageFolder of dict-less (image, label) pairs
    classes: list[str]  # readable names, in label order
    tokenizer: Any
    img_size: int


def class_names(root: Path, folders: list[str]) -> list[str]:
    path = root / CLASSNAMES_FILE
    if not path.is_file():
        return [f.replace("_", " ") for f in folders]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(folders):
        raise PelaBenchError(f"{path} names {len(names)} classes but {root / 'val'} has {len(folders)} class folders")
    return names


_IMAGENET_PROMPTS = ("a photo of a {}.", "a blurry photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.", "a close-up photo of a {}.")


@register_task
class ZeroShotTask(VLTask):
    name = "zeroshot"
    aliases = ("zs", "zero_shot")
    needs_fusion = False
    metrics = (Metric("top1", "zero-shot top-1 (%)"), Metric("top5", "zero-shot top-5 (%)"))
    primary_metric = "top1"
    measure_scope = "params: the whole model; GFLOPs and latency: embedding one image (class embeddings precomputed)"
    layout = "image folder: <root>/val/<class>/<image>, optional <root>/classnames.txt, <root>/vocab.txt"
    schedules = {
        "tiny": ZeroShotSchedule(prompts=("a {} shape",), synthetic_val=32, latency_repeats=3,
                                 text=TextSettings(max_tokens=20)),
        "smoke": ZeroShotSchedule(prompts=("a {} shape", "a picture of a {} shape", "there is a {} shape"),
                                  synthetic_val=800, text=TextSettings(max_tokens=20)),
        "paper": ZeroShotSchedule(prompts=_IMAGENET_PROMPTS, synthetic_val=10_000),
    }

    def synthetic_spec(self, schedule: ZeroShotSchedule, img_size: int | None) -> dict[str, Any]:
        size = img_size or 64
        return {"n_val": schedule.synthetic_val, "img_size": size, "world": asdict(WorldConfig(img_size=size)),
                "vocabulary": vocabulary(caption_world(size)), "writer": synthetic_vl.VL_WRITER_VERSION}

    def write_synthetic(self, root: Path, spec: dict[str, Any], seed: int, progress: bool) -> None:
        # The classification world's scenes, read with the captions' vocabulary (what the model learnt).
        Tokenizer(spec["vocabulary"]).save(Path(root) / VOCAB_FILE)
        write_classification(root, seed=seed, n_train=0, n_val=spec["n_val"],
                             world=WorldConfig.from_dict({**spec["world"], "img_size": spec["img_size"]}),
                             progress=progress)

    def check_root(self, root: Path) -> None:
        if not (Path(root) / "val").is_dir():
            raise PelaBenchError(f"--data {self.name}={root}: no val folder ({self.layout})")

    def load(self, root: Path, schedule: ZeroShotSchedule, img_size: int | None) -> TaskData:
        root = Path(root)
        self.check_root(root)
        size = img_size or 224
        synthetic = read_marker(root) is not None
        val = image_folder(root / "val", image_transforms(size, synthetic, train=False))
        for prompt in schedule.prompts:
            if prompt.count("{}") != 1:
                raise PelaBenchError(f"zero-shot prompt {prompt!r} must hold exactly one '{{}}' for the class name")
        data = ZeroShotData(val, class_names(root, list(val.classes)), self.tokenizer(root), size)
        audit = {"val_images": len(val), "classes": len(val.classes), "prompts": len(schedule.prompts)}
        return TaskData(root, "synthetic" if synthetic else "real", data, audit)

    def check_data(self, data: TaskData, progress: bool = True) -> dict[str, int]:
        paths = [Path(p) for p, _ in data.content.val.samples]
        return {"images": check_files(paths, "checking zero-shot images", progress)}

    @torch.no_grad()
    def class_embeddings(self, model: nn.Module, data: ZeroShotData, schedule: ZeroShotSchedule,
                         device: torch.device) -> torch.Tensor:
        """(classes, dim): each class's normalised mean text embedding over the prompts."""
        out = []
        for name in data.classes:
            texts = [encode_text(data.tokenizer, p.format(name), schedule.text) for p in schedule.prompts]
            ids = torch.stack([t["text_ids"] for t in texts]).to(device)
            mask = torch.stack([t["text_mask"] for t in texts]).to(device)
            feats = model.text_feat(model.encode_text(ids, mask), mask)
            out.append(torch.nn.functional.normalize(feats.mean(0), dim=-1))
        return torch.stack(out)

    def run(self, student: nn.Module, data: TaskData, schedule: ZeroShotSchedule, ctx: RunContext) -> TaskResult:
        d: ZeroShotData = data.content
        check_vocabulary(student, d.tokenizer)
        model = student.eval()
        classes = self.class_embeddings(model, d, schedule, ctx.device)
        loader = DataLoader(d.val, batch_size=schedule.eval_batch_size, num_workers=ctx.workers)
        top1 = top5 = 0
        with torch.no_grad():
            for images, labels in loader:
                sims = model.image_feat(model.encode_image(images.to(ctx.device))) @ classes.T
                best = sims.topk(min(5, sims.shape[1]), dim=1).indices.cpu()
                top1 += int((best[:, 0] == labels).sum())
                top5 += int((best == labels[:, None]).any(1).sum())
        n = len(d.val)
        return TaskResult({"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}, model, 0.0,
                          {"classes": d.classes, "prompts": list(schedule.prompts), "data_audit": data.audit})

    def measured_module(self, result: TaskResult) -> nn.Module:
        return Scorer(result.model, lambda m, image: m.image_feat(m.encode_image(image)))

    def example_inputs(self, data: TaskData, schedule: ZeroShotSchedule, model: nn.Module, batch_size: int
                       ) -> dict[str, torch.Tensor]:
        size = data.content.img_size
        return {"image": torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))}

    def input_size(self, schedule: ZeroShotSchedule, data: TaskData) -> int:
        return data.content.img_size

    def describe_schedule(self, schedule: ZeroShotSchedule, batch: int | None = None) -> str:
        return f"{len(schedule.prompts)} prompt(s), no training"
