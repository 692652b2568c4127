"""Object detection and instance segmentation: Cascade Mask R-CNN on COCO (paper Table 3), on mmdetection 3.3.0.

The model is mmdet's `CascadeRCNN` as the Swin detection configs use it: FPN
(256 channels, 5 levels), RPN, three cascade stages trained at IoU 0.5 / 0.6 /
0.7, each a 4-conv + 1-fc box head with GIoU regression, and an FCN mask head;
BN instead of SyncBN (single process). Any project backbone plugs in through
`tasks.mm.PelaBackbone`. Data: COCO's instances JSON + image folders, read by
mmdet's `CocoDataset`; box and mask AP by mmdet's `CocoMetric` (pycocotools).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from backbones.base import Backbone
from common.errors import PelaBenchError
from tasks.base import Metric, TaskData, check_files, register_task
from tasks.mm.engine import MMSchedule, MMTask, init_weights_quietly
from tasks.synthetic import DET_CLASSES, dense_world, read_marker, write_detection

log = logging.getLogger("pela_bench")

IMG_NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True)
SPLITS = {"train": "train2017", "val": "val2017"}
# Regression target spreads of the three cascade stages (tighter as the IoU threshold rises).
_STAGE_STDS = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
_STAGE_IOUS = (0.5, 0.6, 0.7)
# Our metric names -> mmdet's CocoMetric keys.
_COCO_KEYS = {"AP_box": "coco/bbox_mAP", "AP50_box": "coco/bbox_mAP_50", "AP75_box": "coco/bbox_mAP_75",
              "AP_mask": "coco/segm_mAP", "AP50_mask": "coco/segm_mAP_50", "AP75_mask": "coco/segm_mAP_75"}


@dataclass(frozen=True)
class DetData:
    root: Path
    classes: tuple[str, ...]
    provenance: str
    audit: dict[str, dict[str, int]] = field(default_factory=dict)  # per split: counted and skipped annotations


def ann_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{SPLITS[split]}.json"


def audit_coco(path: Path, img_dir: Path) -> dict[str, int]:
    """Check one COCO instances file against its images; count what mmdet will skip.

    Missing or unreadable files, missing images, and annotations that point at an
    unknown image or category are errors naming the file. Degenerate boxes (w or
    h < 1 px, area <= 0) and boxes wholly outside their image are dropped by
    mmdet's loader; here they are counted so the log and the result row say so.
    """
    if not path.is_file():
        raise PelaBenchError(f"detection data: annotation file {path} not found (COCO layout: "
                             "annotations/instances_{train,val}2017.json)")
    try:
        coco = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PelaBenchError(f"detection data: cannot parse {path}: {exc}") from None
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise PelaBenchError(f"detection data: {path} has no '{key}' list")
    for img in coco["images"]:
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
            raise PelaBenchError(f"detection data: {path}: image entry {img!r:.200} lacks one of id, file_name, "
                                 "width, height")
    images = {img["id"]: img for img in coco["images"]}
    cats = {c["id"] for c in coco["categories"]}
    missing = [img["file_name"] for img in coco["images"] if not (img_dir / img["file_name"]).is_file()]
    if missing:
        raise PelaBenchError(f"detection data: {len(missing)} image(s) listed in {path} are missing, first "
                             f"{img_dir / missing[0]}")
    counts = {"images": len(images), "annotations": len(coco["annotations"]), "degenerate": 0,
              "outside_image": 0, "crowd": 0}
    for ann in coco["annotations"]:
        img = images.get(ann.get("image_id"))
        if img is None:
            raise PelaBenchError(f"detection data: {path}: annotation {ann.get('id')} refers to unknown image "
                                 f"{ann.get('image_id')}")
        if ann.get("category_id") not in cats:
            raise PelaBenchError(f"detection data: {path}: annotation {ann.get('id')} has unknown category "
                                 f"{ann.get('category_id')}")
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise PelaBenchError(f"detection data: {path}: annotation {ann.get('id')} has no valid bbox "
                                 f"[x, y, width, height] (got {ann.get('bbox')!r})") from None
        if ann.get("iscrowd", 0):
            counts["crowd"] += 1  # ignored regions, as in COCO
        elif w < 1 or h < 1 or ann.get("area", w * h) <= 0:
            counts["degenerate"] += 1
        elif x >= img["width"] or y >= img["height"] or x + w <= 0 or y + h <= 0:
            counts["outside_image"] += 1
    skipped = counts["degenerate"] + counts["outside_image"]
    if skipped:
        log.warning("%s: %d of %d annotations skipped (%d degenerate boxes, %d outside their image)",
                    path, skipped, counts["annotations"], counts["degenerate"], counts["outside_image"])
    return counts


def _register() -> None:
    import tasks.mm  # noqa: F401
    from mmcv.transforms import BaseTransform
    from mmdet.evaluation import CocoMetric
    from mmdet.registry import METRICS, TRANSFORMS

    if TRANSFORMS.get("CheckDetSample") is not None:
        return

    @METRICS.register_module()
    class EvaluatedImagesCocoMetric(CocoMetric):
        """mmdet's COCO metric, scored over the images that were evaluated.

        `CocoMetric` scores against every image of its annotation file, so with a
        validation subset (`val_subset`, the smoke budget) the ground truth of the
        images never shown to the model would count as misses.
        """

        def compute_metrics(self, results: list) -> dict[str, float]:
            self.img_ids = sorted({gt["img_id"] for gt, _ in results})
            return super().compute_metrics(results)

    @TRANSFORMS.register_module()
    class CheckDetSample(BaseTransform):
        """Fail when an image's real size differs from the size its annotation file records.

        Masks are rasterised at the recorded size, so a mismatch would shift every
        mask silently; it is an error naming the image instead.
        """

        def transform(self, results: dict) -> dict:
            # The size as read from disk: the test pipeline checks after its Resize.
            h, w = results.get("ori_shape") or results["img"].shape[:2]
            if (results.get("height"), results.get("width")) != (h, w):
                raise PelaBenchError(f"{results['img_path']}: image is {w}x{h} but its annotation file records "
                                     f"{results.get('width')}x{results.get('height')}")
            return results


def load_det_data(root: str | Path) -> DetData:
    root = Path(root)
    marker = read_marker(root)
    audit = {split: audit_coco(ann_file(root, split), root / SPLITS[split]) for split in SPLITS}
    if marker is not None:
        if marker.get("task") != "det":
            raise PelaBenchError(f"{root} holds synthetic {marker.get('task', 'cls')!r} data, not detection")
        return DetData(root, tuple(DET_CLASSES), "synthetic", audit)
    cats = json.loads(ann_file(root, "val").read_text())["categories"]
    return DetData(root, tuple(c["name"] for c in sorted(cats, key=lambda c: c["id"])), "real", audit)


def _box_head(num_classes: int, stds: list[float], norm: dict, s: MMSchedule) -> dict[str, Any]:
    return dict(type="Shared4Conv1FCBBoxHead", in_channels=s.neck_channels, conv_out_channels=s.neck_channels,
                fc_out_channels=s.roi_fc_channels,
                roi_feat_size=7, num_classes=num_classes, norm_cfg=norm, reg_class_agnostic=False,
                reg_decoded_bbox=True,
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=stds),
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type="GIoULoss", loss_weight=10.0))


def _rcnn_train(iou: float, samples: int) -> dict[str, Any]:
    return dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type="RandomSampler", num=samples, pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                mask_size=28, pos_weight=-1, debug=False)


def build_detector(backbone: Backbone, num_classes: int, s: MMSchedule) -> nn.Module:
    """mmdet's Cascade Mask R-CNN (Swin's 4conv1fc / GIoU variant) over a project backbone."""
    _register()
    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    backbone.attach_pyramid()
    chans, strides = list(backbone.pyramid_channels), list(backbone.pyramid_strides)
    norm = dict(type="BN", requires_grad=True)
    width = s.neck_channels
    cfg = ConfigDict(
        type="CascadeRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", pad_mask=True, pad_size_divisor=32, **IMG_NORM),
        backbone=dict(type="PelaBackbone", backbone=backbone),
        neck=dict(type="FPN", in_channels=chans, out_channels=width, num_outs=5),
        rpn_head=dict(
            type="RPNHead", in_channels=width, feat_channels=width,
            anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                  strides=strides + [2 * strides[-1]]),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),
        roi_head=dict(
            type="CascadeRoIHead", num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
            bbox_roi_extractor=dict(type="SingleRoIExtractor", out_channels=width, featmap_strides=strides,
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
            bbox_head=[_box_head(num_classes, stds, norm, s) for stds in _STAGE_STDS],
            mask_roi_extractor=dict(type="SingleRoIExtractor", out_channels=width, featmap_strides=strides,
                                    roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0)),
            mask_head=dict(type="FCNMaskHead", num_convs=4, in_channels=width, conv_out_channels=width,
                           num_classes=num_classes,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=0, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=2000, max_per_img=s.rpn_train_proposals or 2000,
                              nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=[_rcnn_train(iou, s.rcnn_train_samples or 512) for iou in _STAGE_IOUS]),
        test_cfg=dict(
            rpn=dict(nms_pre=1000, max_per_img=s.rpn_test_proposals or 1000, nms=dict(type="nms", iou_threshold=0.7),
                     min_bbox_size=0),
            rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                      mask_thr_binary=0.5)),
    )
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(cfg)
    init_weights_quietly(model)
    return model


def _pipelines(s: MMSchedule) -> tuple[list[dict], list[dict]]:
    load = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
            dict(type="CheckDetSample")]
    if s.multiscale:  # the 3x recipe: short side 480-800 in steps of 32, long side at most 1333
        resize = dict(type="RandomChoiceResize", scales=[(1333, short) for short in range(480, 801, 32)],
                      keep_ratio=True)
    else:
        resize = dict(type="Resize", scale=s.img_scale, keep_ratio=True)
    train = [*load, resize, dict(type="RandomFlip", prob=0.5), dict(type="PackDetInputs")]
    test = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=s.img_scale, keep_ratio=True),
            dict(type="LoadAnnotations", with_bbox=True, with_mask=True), dict(type="CheckDetSample"),
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    return train, test


# The Swin Cascade Mask R-CNN 3x schedule at paper scale: 36 epochs, 16 images, AdamW 1e-4, steps at
# 27 and 33, multi-scale training (short side 480-800). Smoke and tiny runs use a smaller RoI budget.
DET_SCHEDULES = {
    "tiny": MMSchedule(by_epoch=False, length=2, batch_size=2, lr=1e-4, weight_decay=0.05, warmup_iters=1,
                       img_scale=(64, 64), val_subset=2, log_interval=1, rpn_train_proposals=100,
                       rcnn_train_samples=32, rpn_test_proposals=20, synthetic_train=8, synthetic_val=4,
                       latency_repeats=1),
    "smoke": MMSchedule(by_epoch=False, length=3, batch_size=2, lr=1e-4, weight_decay=0.05, warmup_iters=2,
                        img_scale=(128, 128), val_subset=2, log_interval=1, rpn_train_proposals=200,
                        rcnn_train_samples=64, rpn_test_proposals=50, synthetic_train=64, synthetic_val=16,
                        latency_repeats=2),
    "paper": MMSchedule(by_epoch=True, length=36, batch_size=16, lr=1e-4, weight_decay=0.05, warmup_iters=1000,
                        img_scale=(1333, 800), multiscale=True, milestones=(27, 33), checkpoint_interval=1,
                        synthetic_train=20_000, synthetic_val=2_000),
}


# The CPU-sized backbones at the smoke budget: the same Cascade Mask R-CNN, narrower (FPN and RoI
# convs 64, box fc 256), on the teachers' 64 px scenes, the backbone held fixed for the reason
# `tasks.segmentation.SEG_SMALL_SCHEDULES` gives. 600 iterations, not 300: at 300 the heads were still
# learning (swin_micro's dense model 37.6 box AP on seed 0, 49.7 at 600); a higher rate instead
# (3e-3) left it at 14.9.
DET_SMALL_SCHEDULES = {
    "smoke": MMSchedule(by_epoch=False, length=600, batch_size=4, lr=1e-3, weight_decay=0.05, warmup_iters=30,
                        img_scale=(64, 64), log_interval=50, rpn_train_proposals=100, rcnn_train_samples=16,
                        rpn_test_proposals=50, neck_channels=64, roi_fc_channels=256, freeze_backbone=True,
                        synthetic_train=512, synthetic_val=128, latency_repeats=5),
}


@register_task
class DetectionTask(MMTask):
    """Cascade Mask R-CNN; metrics box and mask AP (COCO, percent)."""

    name = "det"
    aliases = ("detection",)
    metrics = (Metric("AP_box", "AP box"), Metric("AP50_box", "AP50 box", in_table=False),
               Metric("AP75_box", "AP75 box", in_table=False), Metric("AP_mask", "AP mask"),
               Metric("AP50_mask", "AP50 mask", in_table=False), Metric("AP75_mask", "AP75 mask", in_table=False))
    primary_metric = "AP_box"
    scope = "mmdet"
    sample_cls_path = "mmdet.structures:DetDataSample"
    schedules = DET_SCHEDULES
    small_schedules = DET_SMALL_SCHEDULES
    layout = "COCO: train2017/, val2017/ and annotations/instances_{train,val}2017.json"

    def write_synthetic(self, root: Path, spec: dict[str, Any], seed: int, progress: bool) -> None:
        write_detection(root, seed=seed, n_train=spec["n_train"], n_val=spec["n_val"],
                        world=dense_world(spec["img_size"]), progress=progress)

    def load(self, root: Path, schedule: MMSchedule, img_size: int | None) -> TaskData:
        _register()
        data = load_det_data(root)
        return TaskData(data.root, data.provenance, data, audit=data.audit)

    def check_data(self, data: TaskData, progress: bool = True) -> dict[str, int]:
        counts = {}
        for split, folder in SPLITS.items():
            images = json.loads(ann_file(data.root, split).read_text())["images"]
            counts[folder] = check_files([data.root / folder / img["file_name"] for img in images],
                                         f"checking {folder}", progress)
        return counts

    def build_model(self, backbone: Backbone, data: TaskData, schedule: MMSchedule) -> nn.Module:
        return build_detector(backbone, len(data.content.classes), schedule)

    def loaders(self, data: TaskData, s: MMSchedule, *, workers: int, train_batch: int | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        det: DetData = data.content
        train_pipe, test_pipe = _pipelines(s)
        meta = dict(classes=det.classes)
        common = dict(type="CocoDataset", data_root=str(det.root), metainfo=meta)
        train = dict(batch_size=train_batch or s.batch_size, num_workers=workers, persistent_workers=workers > 0,
                     sampler=dict(type="DefaultSampler" if s.by_epoch else "InfiniteSampler", shuffle=True),
                     batch_sampler=dict(type="AspectRatioBatchSampler"),
                     dataset=dict(**common, ann_file=str(ann_file(det.root, "train").relative_to(det.root)),
                                  data_prefix=dict(img=f"{SPLITS['train']}/"),
                                  filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=train_pipe))
        val_ds = dict(**common, ann_file=str(ann_file(det.root, "val").relative_to(det.root)),
                      data_prefix=dict(img=f"{SPLITS['val']}/"), test_mode=True, pipeline=test_pipe)
        if s.val_subset:
            val_ds["indices"] = s.val_subset
        test = dict(batch_size=1, num_workers=workers, persistent_workers=False, drop_last=False,
                    sampler=dict(type="DefaultSampler", shuffle=False), dataset=val_ds)
        return train, test

    def evaluator(self, data: TaskData, s: MMSchedule) -> dict[str, Any]:
        # mmdet's own metric on the full split; on a subset, the one that scores only what was evaluated.
        return dict(type="EvaluatedImagesCocoMetric" if s.val_subset else "CocoMetric",
                    ann_file=str(ann_file(data.content.root, "val")), metric=["bbox", "segm"], format_only=False)

    def postprocess(self, raw: dict[str, float], s: MMSchedule) -> dict[str, float]:
        if not raw:
            # mmdet's COCO metric returns nothing when no image kept a single box above the
            # score threshold; by definition every AP is then 0 (a short smoke run does this).
            log.warning("det: the detector kept no box on any of the %s test images: every AP is 0",
                        s.val_subset or "all")
            raw = {v: 0.0 for v in _COCO_KEYS.values()}
        if _COCO_KEYS["AP_box"] not in raw:
            raise PelaBenchError(f"detection evaluation returned no box AP (got {sorted(raw)})")
        # pycocotools reports -1 when a split has no ground truth of a kind; keep that visible as NaN.
        return {k: (100.0 * raw[v] if raw[v] >= 0 else float("nan")) for k, v in _COCO_KEYS.items() if v in raw}
