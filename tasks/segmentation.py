"""Semantic segmentation: UperNet on ADE20K (paper Tables 2 and 9), on mmsegmentation 1.2.2.

The model is mmseg's own: `EncoderDecoder` with `UPerHead` (pyramid pooling at
1/2/3/6, 512 channels) and an auxiliary `FCNHead` (loss weight 0.4), over any
project backbone through `tasks.mm.PelaBackbone`. Data: ADE20K's on-disk layout
(`images/{training,validation}/*.jpg`, `annotations/.../*.png`, 0 = unlabelled),
read by mmseg's `ADE20KDataset` and its standard pipeline; mIoU by mmseg's
`IoUMetric`, single scale. The synthetic world is written in the same layout with
its own class list (`SyntheticADEDataset`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones.base import Backbone
from common.errors import PelaBenchError
from tasks.dense import DenseInference, DenseResult, DenseSchedule, fit_and_test, init_weights_quietly, train_step
from tasks.synthetic import SEG_CLASSES, read_marker

log = logging.getLogger("pela_bench")

IMG_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
SPLITS = {"train": "training", "val": "validation"}
ADE_NUM_CLASSES = 150


@dataclass(frozen=True)
class SegData:
    root: Path
    classes: tuple[str, ...]
    provenance: str  # "synthetic" or "real"
    dataset_type: str


def _register() -> None:
    """Register the project's pieces in mmseg's registries (idempotent)."""
    import tasks.mm  # noqa: F401
    from mmcv.transforms import BaseTransform
    from mmseg.datasets import ADE20KDataset
    from mmseg.registry import DATASETS, TRANSFORMS

    if DATASETS.get("SyntheticADEDataset") is not None:
        return

    @DATASETS.register_module()
    class SyntheticADEDataset(ADE20KDataset):
        """ADE20K's reader and layout with the synthetic world's classes."""

        METAINFO = dict(classes=SEG_CLASSES, palette=_palette(len(SEG_CLASSES)))

    @TRANSFORMS.register_module()
    class CheckSegSample(BaseTransform):
        """Fail on an annotation that does not fit its image or the class list, naming the file.

        Runs right after loading, so a corrupt label never reaches the metric.
        """

        def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
            self.num_classes = num_classes
            self.ignore_index = ignore_index

        def transform(self, results: dict) -> dict:
            seg = results["gt_seg_map"]
            # The size as read from disk: the test pipeline loads the label map after its Resize.
            img_hw = tuple(results.get("ori_shape") or results["img"].shape[:2])
            if tuple(seg.shape[:2]) != img_hw:
                raise PelaBenchError(f"{results['seg_map_path']}: label map is {seg.shape[1]}x{seg.shape[0]}, "
                                     f"image {results['img_path']} is {img_hw[1]}x{img_hw[0]}")
            bad = (seg >= self.num_classes) & (seg != self.ignore_index)
            if bad.any():
                top = int(seg[bad].max()) + (1 if results.get("reduce_zero_label") else 0)
                raise PelaBenchError(f"{results['seg_map_path']}: label value {top} is out of range for "
                                     f"{self.num_classes} classes")
            return results


def load_seg_data(root: str | Path) -> SegData:
    """Check an ADE20K-layout root up front: folders present, every image has its label map."""
    root = Path(root)
    marker = read_marker(root)
    for split in SPLITS.values():
        for kind in ("images", "annotations"):
            if not (root / kind / split).is_dir():
                raise PelaBenchError(f"segmentation data: {root / kind / split} not found (ADE20K layout: "
                                     "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png)")
        images = sorted((root / "images" / split).glob("*.jpg"))
        if not images:
            raise PelaBenchError(f"segmentation data: no .jpg images in {root / 'images' / split}")
        missing = [p for p in images if not (root / "annotations" / split / f"{p.stem}.png").is_file()]
        if missing:
            raise PelaBenchError(f"segmentation data: {len(missing)} image(s) without a label map, first "
                                 f"{root / 'annotations' / split / (missing[0].stem + '.png')}")
    if marker is not None:
        if marker.get("task") != "seg":
            raise PelaBenchError(f"{root} holds synthetic {marker.get('task', 'cls')!r} data, not segmentation")
        if tuple(marker["classes"]) != SEG_CLASSES:
            raise PelaBenchError(f"{root}: synthetic classes {marker['classes']} differ from this version's "
                                 f"{list(SEG_CLASSES)}; regenerate it with tools/make_data.py --task seg")
        return SegData(root, tuple(marker["classes"]), "synthetic", "SyntheticADEDataset")
    from mmseg.datasets import ADE20KDataset  # noqa: F401  (after tasks.mm, via _register)

    return SegData(root, tuple(ADE20KDataset.METAINFO["classes"]), "real", "ADE20KDataset")


def _pipelines(s: DenseSchedule, num_classes: int) -> tuple[list[dict], list[dict]]:
    crop = s.crop_size or (s.img_scale[1], s.img_scale[1])
    train = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
        dict(type="CheckSegSample", num_classes=num_classes),
        dict(type="RandomResize", scale=s.img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    test = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=s.img_scale, keep_ratio=True),
        dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset
        dict(type="CheckSegSample", num_classes=num_classes),
        dict(type="PackSegInputs"),
    ]
    return train, test


def build_segmentor(backbone: Backbone, num_classes: int, s: DenseSchedule) -> nn.Module:
    """mmseg's UperNet (+ auxiliary FCN head) over a project backbone."""
    _register()
    import mmseg.models  # noqa: F401  (registers UPerHead and friends)
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    chans = list(backbone.attach_pyramid().pyramid_channels)
    crop = s.crop_size or (s.img_scale[1], s.img_scale[1])
    norm = dict(type="BN", requires_grad=True)  # SyncBN only pays off across GPUs
    # The auxiliary head reads the stride-16 map, as mmseg's Swin and ViT UperNet configs do.
    cfg = ConfigDict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", size=crop, pad_val=0, seg_pad_val=255, **IMG_NORM),
        backbone=dict(type="PelaBackbone", backbone=backbone),
        decode_head=dict(type="UPerHead", in_channels=chans, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=s.head_channels, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm,
                         align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=chans[2], in_index=2, channels=256, num_convs=1,
                            concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm,
                            align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg)
    init_weights_quietly(model)
    return model


class SegmentationTask:
    """UperNet semantic segmentation; metrics mIoU, mAcc, aAcc (percent)."""

    name = "seg"
    metric_names = ("mIoU", "mAcc", "aAcc")
    primary_metric = "mIoU"
    scope = "mmseg"

    def datasets(self, root: str | Path) -> SegData:
        _register()
        return load_seg_data(root)

    def build_model(self, backbone: Backbone, data: SegData, schedule: DenseSchedule) -> nn.Module:
        return build_segmentor(backbone, len(data.classes), schedule)

    def loaders(self, data: SegData, s: DenseSchedule, *, workers: int, train_batch: int | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        train_pipe, test_pipe = _pipelines(s, len(data.classes))
        # Each dataset class carries its own class list (ADE20K's 150, or the synthetic world's).
        common = dict(type=data.dataset_type, data_root=str(data.root), reduce_zero_label=True)
        train = dict(batch_size=train_batch or s.batch_size, num_workers=workers, persistent_workers=workers > 0,
                     sampler=dict(type="InfiniteSampler" if not s.by_epoch else "DefaultSampler", shuffle=True),
                     dataset=dict(**common, data_prefix=dict(img_path="images/training",
                                                             seg_map_path="annotations/training"),
                                  pipeline=train_pipe))
        val_ds = dict(**common, data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
                      pipeline=test_pipe)
        if s.val_subset:
            val_ds["indices"] = s.val_subset
        test = dict(batch_size=1, num_workers=workers, persistent_workers=False,
                    sampler=dict(type="DefaultSampler", shuffle=False), dataset=val_ds)
        return train, test

    def evaluator(self) -> dict[str, Any]:
        return dict(type="IoUMetric", iou_metrics=["mIoU"])

    def inference_module(self, model: nn.Module) -> nn.Module:
        from mmseg.structures import SegDataSample

        return DenseInference(model, SegDataSample)

    def train_step(self, model: nn.Module, data, s: DenseSchedule, batch_size: int):
        train, _ = self.loaders(data, s, workers=0, train_batch=batch_size)
        return train_step(model, self.scope, train)

    def run(self, backbone: Backbone, data: SegData, s: DenseSchedule, *, work_dir: Path, seed: int,
            device: torch.device, workers: int = 1, train_batch: int | None = None,
            progress: bool = True) -> DenseResult:
        from mmengine.runner import set_random_seed

        set_random_seed(seed)  # the heads are initialised from the global RNG
        model = self.build_model(backbone, data, s)
        train, test = self.loaders(data, s, workers=workers, train_batch=train_batch)
        result = fit_and_test(model=model, scope=self.scope, schedule=s, train_loader=train, test_loader=test,
                              evaluator=self.evaluator(), work_dir=work_dir, seed=seed, device=device,
                              progress=progress)
        result.metrics = {k: result.metrics[k] for k in self.metric_names if k in result.metrics}
        if "mIoU" not in result.metrics:
            raise PelaBenchError(f"segmentation evaluation returned no mIoU (got {sorted(result.metrics)})")
        return result


def _palette(n: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [[int(c) for c in rng.integers(0, 256, 3)] for _ in range(n)]
