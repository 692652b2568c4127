"""Image classification on an ImageNet-layout image folder (``root/{train,val}/<class>/*``).

Metrics: top-1 and top-5 accuracy in percent, as in the paper's Table 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2

from common import distributed
from common.errors import PelaBenchError
from tasks.images import LabelledImages, load_rgb, to_normalized
from tasks.base import Metric, RunContext, Task, TaskData, TaskResult, check_files, register_task
from tasks import synthetic as scenes
from tasks.synthetic import WorldConfig, read_marker, write_classification

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClassificationData:
    train: Dataset
    val: Dataset
    classes: list[str]
    provenance: str  # "synthetic" or "real"
    img_size: int = 224


class DictSamples(Dataset):
    """An ``(image, label)`` data set as dict samples, the batch format of every task."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.dataset[index]
        return {"image": image, "label": label}


def _transforms(img_size: int, synthetic: bool) -> tuple[v2.Compose, v2.Compose]:
    # ImageNet recipe: random-resized crops down to 8 % of the image and a 0.875 centre
    # crop. Synthetic scenes put the subject anywhere, so they keep most of the frame.
    scale_min, crop_pct = (0.8, 1.0) if synthetic else (0.08, 0.875)
    bicubic = v2.InterpolationMode.BICUBIC
    train = v2.Compose([
        v2.RandomResizedCrop(img_size, scale=(scale_min, 1.0), interpolation=bicubic, antialias=True),
        v2.RandomHorizontalFlip(),
        *to_normalized(IMAGENET_MEAN, IMAGENET_STD),
    ])
    val = v2.Compose([
        v2.Resize(round(img_size / crop_pct), interpolation=bicubic, antialias=True),
        v2.CenterCrop(img_size),
        *to_normalized(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return train, val


def image_folder(path: Path, transform: v2.Compose) -> LabelledImages:
    """The images of ``path/<class>/*`` with their class index (classes sorted, as torchvision's ImageFolder)."""
    if not path.is_dir():
        raise PelaBenchError(f"image folder not found: {path} (expected <root>/train and <root>/val, one sub-folder per class)")
    try:
        folder = tv_datasets.ImageFolder(str(path), loader=load_rgb)  # indexes the files; reads none
    except FileNotFoundError as exc:  # no class folders or no images
        raise PelaBenchError(f"no images in {path}: {exc}") from None
    return LabelledImages(folder.samples, transform, classes=folder.classes)


def image_folder_datasets(root: str | Path, img_size: int) -> ClassificationData:
    root = Path(root)
    if not root.is_dir():
        raise PelaBenchError(f"data root not found: {root}")
    synthetic = read_marker(root) is not None
    train_tf, val_tf = _transforms(img_size, synthetic)
    train = image_folder(root / "train", train_tf)
    val = image_folder(root / "val", val_tf)
    if train.classes != val.classes:
        raise PelaBenchError(f"{root}/train and {root}/val have different class folders")
    return ClassificationData(train, val, list(train.classes), "synthetic" if synthetic else "real", img_size)


@dataclass(frozen=True)
class ClassificationSchedule:
    """Evaluation settings and the synthetic world's size (it is also the pre-training data)."""

    synthetic_train: int
    synthetic_val: int
    eval_batch_size: int = 256
    latency_repeats: int = 20


class CrossEntropy:
    """The classification objective: logits of ``batch["image"]`` against ``batch["label"]``."""

    name = "cross_entropy"

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(batch["image"])

    def loss(self, output: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(output, batch["label"])


@register_task
class ClassificationTask(Task):
    """Classification with the backbone's own head: cross-entropy, top-1/top-5 (Table 1).

    The student is evaluated as pre-training left it (no fine-tune), as in the paper's
    ImageNet rows; this task is also the vision backbones' pre-training task.
    """

    name = "cls"
    aliases = ("classification",)
    metrics = (Metric("top1", "top-1 (%)"), Metric("top5", "top-5 (%)"))
    primary_metric = "top1"
    layout = "ImageNet image folder: <root>/{train,val}/<class>/<image>"
    schedules = {
        "tiny": ClassificationSchedule(synthetic_train=256, synthetic_val=64, eval_batch_size=64, latency_repeats=3),
        "smoke": ClassificationSchedule(synthetic_train=3200, synthetic_val=800, latency_repeats=50),
        "paper": ClassificationSchedule(synthetic_train=50_000, synthetic_val=10_000, latency_repeats=50),
    }
    _reference_key: tuple[int, int] | None = None
    _reference_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def synthetic_spec(self, schedule: ClassificationSchedule, img_size: int | None) -> dict[str, Any]:
        return {"n_train": schedule.synthetic_train, "n_val": schedule.synthetic_val, "img_size": img_size or 64,
                "generator": scenes.GENERATOR_VERSION}

    def write_synthetic(self, root: Path, spec: dict[str, Any], seed: int, progress: bool) -> None:
        write_classification(root, seed=seed, n_train=spec["n_train"], n_val=spec["n_val"],
                             world=WorldConfig(img_size=spec["img_size"]), progress=progress)

    def check_root(self, root: Path) -> None:
        if not root.is_dir():
            raise PelaBenchError(f"--data {self.name}={root} does not exist")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise PelaBenchError(f"--data {self.name}={root} has no '{split}' folder ({self.layout})")

    def load(self, root: Path, schedule: ClassificationSchedule, img_size: int | None) -> TaskData:
        data = image_folder_datasets(root, img_size or 224)
        return TaskData(Path(root), data.provenance, data)

    def check_data(self, data: TaskData, progress: bool = True) -> dict[str, int]:
        return {split: check_files([Path(p) for p, _ in getattr(data.content, split).samples],
                                   f"checking {split}", progress) for split in ("train", "val")}

    def objective(self) -> CrossEntropy:
        return CrossEntropy()

    def train_split(self, data: TaskData) -> Dataset:
        return DictSamples(data.content.train)

    def backbone_overrides(self, data: TaskData) -> dict[str, Any]:
        return {"num_classes": len(data.content.classes)}

    def run(self, student: nn.Module, data: TaskData, schedule: ClassificationSchedule, ctx: RunContext) -> TaskResult:
        loader = eval_loader(DictSamples(data.content.val), schedule.eval_batch_size, ctx)
        analysis = {}
        if ctx.reference is not None and hasattr(student, "pooled_features"):
            reference = self._reference_features(ctx.reference, loader, ctx.device)
            analysis["feature_similarity"] = feature_similarity(
                pooled_features(student, loader, ctx.device), reference, data.content.classes)
        return TaskResult(self.evaluate(student, loader, ctx.device), student, analysis=analysis)

    def _reference_features(self, reference: nn.Module, loader: DataLoader, device: torch.device
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        # Every row of a run compares with the same model on the same images: computed once.
        key = (id(reference), id(loader.dataset.dataset))
        if self._reference_key != key:
            self._reference_cache = pooled_features(reference, loader, device)
            self._reference_key = key
        return self._reference_cache

    def example_inputs(self, data: TaskData, schedule: ClassificationSchedule, model: nn.Module, batch_size: int
                       ) -> dict[str, torch.Tensor]:
        size = data.content.img_size
        return {"image": torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))}

    def input_size(self, schedule: ClassificationSchedule, data: TaskData) -> int:
        return data.content.img_size

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> dict[str, float]:
        """Top-1/top-5 over `loader`'s batches and, in a distributed run, every other rank's (`eval_loader`)."""
        model.eval()
        counts = []  # per batch: (top-1 hits, top-5 hits, images); summed over every rank's batches
        for batch in loader:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            logits = model(images)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(labels[:, None])
            counts.append((hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), labels.numel()))
        counts = distributed.gather_batches(counts)
        correct1, correct5, total = (sum(c[i] for c in counts) for i in range(3))
        if total == 0:
            raise PelaBenchError("the evaluation split is empty")
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


@torch.inference_mode()
def pooled_features(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's pooled feature (`Backbone.pooled_features`), unit length, and its label (every rank's
    shard of `loader`, gathered in order)."""
    model.eval()
    parts = []
    for batch in loader:
        parts.append((F.normalize(model.pooled_features(batch["image"].to(device)).float(), dim=1).cpu(),
                      batch["label"]))
    parts = distributed.gather_batches(parts)
    return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])


def eval_loader(dataset: Dataset, batch_size: int, ctx: RunContext) -> DataLoader:
    """The evaluation batches of this rank (all of them in a single process), in the single-process order."""
    return DataLoader(dataset, batch_sampler=distributed.shard_batches(len(dataset), batch_size),
                      num_workers=ctx.workers, pin_memory=ctx.device.type == "cuda",
                      worker_init_fn=distributed.loader_worker_init)


def feature_similarity(student: tuple[torch.Tensor, torch.Tensor], reference: tuple[torch.Tensor, torch.Tensor],
                       classes: list[str]) -> dict[str, Any]:
    """Per class: how alike the student's features of its images are (the mean cosine over pairs of
    distinct images: the paper's Fig. 2, where plain SVD's features crowd together), and how close each
    is to the uncompressed model's feature of the same image (mean cosine; None if the widths differ)."""
    feats, labels = student
    ref_feats, ref_labels = reference
    if not torch.equal(labels, ref_labels):
        raise PelaBenchError("feature similarity: the student and the reference saw different images")
    within, to_ref = [], []
    for c in range(len(classes)):
        f = feats[labels == c]
        n = len(f)
        within.append(float(((f @ f.T).sum() - (f * f).sum()) / (n * (n - 1))) if n > 1 else None)
        same_width = f.shape[1] == ref_feats.shape[1]
        to_ref.append(float((f * ref_feats[labels == c]).sum(1).mean()) if n and same_width else None)
    return {"classes": list(classes), "within_class": within, "to_dense": to_ref}
