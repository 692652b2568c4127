"""UperNet and Cascade Mask R-CNN on synthetic ADE20K/COCO folders: train, test, resume, bad inputs."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from backbones import create_backbone
from benchmark.efficiency import count_flops
from common.errors import PelaBenchError
from tasks import RunContext, TaskData, TaskResult
from tasks.detection import DET_SCHEDULES, DET_SMALL_SCHEDULES, DetectionTask, audit_coco, build_detector, load_det_data
from tasks.base import trainable_copy
from tasks.mm.engine import MMInference, MMSchedule, MMTask
from tasks.segmentation import SEG_SCHEDULES, SEG_SMALL_SCHEDULES, SegData, SegmentationTask, load_seg_data
from tasks.synthetic import DENSE_LABEL_VERSION, GENERATOR_VERSION, SEG_CLASSES, class_names, dense_world, write_detection, write_segmentation

# Test-time scales differ from the 64-px scenes, so the checks run on resized images as with real data.
SEG = MMSchedule(by_epoch=False, length=1, batch_size=2, lr=1e-4, weight_decay=0.01, warmup_iters=1,
                 img_scale=(256, 80), crop_size=(64, 64), val_subset=2, log_interval=1)
DET = MMSchedule(by_epoch=False, length=1, batch_size=2, lr=1e-4, weight_decay=0.05, warmup_iters=1,
                 img_scale=(80, 80), val_subset=2, log_interval=1,
                 rpn_train_proposals=50, rcnn_train_samples=16, rpn_test_proposals=20)
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def ctx(work_dir, progress=False, **kw):
    return RunContext(device=CPU, seed=0, work_dir=work_dir, workers=0, progress=progress, **kw)


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    return write_segmentation(tmp_path_factory.mktemp("ade"), n_train=4, n_val=2, world=dense_world(64),
                              progress=False)


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    return write_detection(tmp_path_factory.mktemp("coco"), n_train=4, n_val=2, world=dense_world(64),
                           progress=False)


def _copy(root, tmp_path):
    dst = tmp_path / root.name
    shutil.copytree(root, dst)
    return dst


def test_segmentation_trains_tests_and_resumes(seg_root, tmp_path, monkeypatch, capsys):
    task = SegmentationTask()
    data = task.load(seg_root, SEG, None)
    assert isinstance(data, TaskData) and isinstance(data.content, SegData)
    assert data.provenance == "synthetic" and data.content.classes[0] == "background"
    work = tmp_path / "work"
    student = create_backbone("deit_micro")
    first = task.run(student, data, SEG, ctx(work, progress=True))
    assert isinstance(first, TaskResult)
    assert set(first.metrics) == {"mIoU", "mAcc", "aAcc"} == {m.name for m in task.metrics}
    assert 0.0 <= first.metrics["mIoU"] <= 100.0
    assert first.seconds > 0
    assert first.details["train_batch"] == SEG.batch_size and first.details["work_dir"] == str(work)
    assert first.details["schedule"]["length"] == 1 and first.details["data_audit"] == data.audit
    assert (work / "last_checkpoint").is_file()
    # The student is fine-tuned as a copy: no neck, no dropped classifier leak into it.
    assert student.pyramid_neck is None and student.info.num_classes == 16
    # The console shows training progress, not mmengine's per-parameter and environment dumps;
    # those stay in the fine-tune's log file.
    console = capsys.readouterr().out
    assert "Iter(train) [1/1]" in console and "mIoU" in console
    assert "paramwise_options" not in console and "System environment" not in console
    log_text = "".join(f.read_text() for f in work.glob("*/*.log"))
    assert "paramwise_options" in log_text and "System environment" in log_text
    # A second run finds the finished checkpoint, loads it through torch's safe loader, and only tests.
    # It runs as on a GPU host (mmengine sees CUDA) and must still honour device=cpu.
    import mmengine.runner.runner as runner_module
    monkeypatch.setattr(runner_module, "get_device", lambda: "cuda")
    again = task.run(create_backbone("deit_micro"), data, SEG, ctx(work))
    assert again.metrics == pytest.approx(first.metrics)
    # The inference path is countable: backbone + neck + UperNet head at the crop size.
    measured = task.measured_module(first)
    assert isinstance(measured, MMInference) and measured.model is first.model
    inputs = task.example_inputs(data, SEG, first.model, 1)
    assert set(inputs) == {"image"} and inputs["image"].shape == (1, 3, 64, 64) == (1, 3, *SEG.crop_size)
    assert task.input_size(SEG, data) == 64
    flops = count_flops(measured, inputs, on_meta=False)
    assert flops["flops"] > 0
    assert count_flops(measured, (1, 3, 64, 64), on_meta=False)["flops"] == flops["flops"]


def test_detection_trains_and_reports_box_and_mask_ap(det_root, tmp_path):
    task = DetectionTask()
    data = task.load(det_root, DET, None)
    assert data.provenance == "synthetic" and data.content.classes == tuple(class_names())
    assert data.audit["val"]["images"] == 2 and data.audit["train"]["degenerate"] == 0
    assert data.audit == data.content.audit
    res = task.run(create_backbone("swin_micro"), data, DET, ctx(tmp_path / "work"))
    assert {"AP_box", "AP_mask", "AP50_box"} <= set(res.metrics) <= {m.name for m in task.metrics}
    assert all(np.isnan(v) or 0.0 <= v <= 100.0 for v in res.metrics.values())
    assert res.details["train_batch"] == DET.batch_size and res.details["data_audit"] == data.audit
    assert isinstance(task.measured_module(res), MMInference)


def test_coco_metric_on_a_validation_subset_scores_only_the_evaluated_images(tmp_path):
    """The ground truth fed back as predictions for 2 of 4 images scores 100 box and mask AP."""
    from pycocotools.coco import COCO

    from tasks.detection import _register, ann_file

    _register()
    from mmdet.registry import METRICS
    from mmengine.registry import DefaultScope

    root = write_detection(tmp_path / "coco", n_train=1, n_val=4, world=dense_world(64), progress=False)
    task = DetectionTask()
    data = task.load(root, DET, None)
    assert data.content == load_det_data(root)
    coco = COCO(str(ann_file(root, "val")))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    samples = []
    for img_id in sorted(coco.getImgIds())[:2]:
        img = coco.loadImgs(img_id)[0]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
        assert anns
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32)
        samples.append({"img_id": img_id, "ori_shape": (img["height"], img["width"]), "pred_instances": {
            "bboxes": boxes, "scores": torch.ones(len(anns)),
            "labels": torch.tensor([data.content.classes.index(names[a["category_id"]]) for a in anns]),
            "masks": torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]).astype(bool))}})
    with DefaultScope.overwrite_default_scope("mmdet"):
        metric = METRICS.build(task.evaluator(data, DET))
    metric.dataset_meta = {"classes": data.content.classes}
    metric.process({}, samples)
    scores = metric.evaluate(len(samples))
    assert scores["coco/bbox_mAP"] == pytest.approx(1.0) and scores["coco/segm_mAP"] == pytest.approx(1.0)


def test_missing_label_map_is_named(seg_root, tmp_path):
    root = _copy(seg_root, tmp_path)
    victim = sorted((root / "annotations" / "validation").glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(PelaBenchError, match=victim.name):
        load_seg_data(root)


def test_seg_root_with_det_data_is_refused(det_root):
    with pytest.raises(PelaBenchError, match="not segmentation|not found"):
        load_seg_data(det_root)


def _check_seg(results):
    from tasks.segmentation import _register

    _register()
    from mmengine.registry import DefaultScope
    from mmseg.registry import TRANSFORMS

    with DefaultScope.overwrite_default_scope("mmseg"):
        return TRANSFORMS.build(dict(type="CheckSegSample", num_classes=5)).transform(results)


def test_label_out_of_range_and_size_mismatch_are_errors_naming_the_file():
    img = np.zeros((8, 8, 3), np.uint8)
    ok = {"img": img, "gt_seg_map": np.full((8, 8), 255, np.uint8), "seg_map_path": "a.png", "img_path": "a.jpg",
          "reduce_zero_label": True}
    assert _check_seg(dict(ok)) is not None
    bad_value = dict(ok, gt_seg_map=np.full((8, 8), 7, np.uint8))
    with pytest.raises(PelaBenchError, match=r"a\.png: label value 8 is out of range"):
        _check_seg(bad_value)
    bad_size = dict(ok, gt_seg_map=np.zeros((4, 8), np.uint8))
    with pytest.raises(PelaBenchError, match=r"a\.png: label map is 8x4"):
        _check_seg(bad_size)


def test_out_of_range_label_stops_a_real_run(seg_root, tmp_path):
    root = _copy(seg_root, tmp_path)
    for png in (root / "annotations" / "validation").glob("*.png"):
        Image.fromarray(np.full((64, 64), 42, np.uint8)).save(png)
    task = SegmentationTask()
    with pytest.raises(PelaBenchError, match=f"out of range for {len(SEG_CLASSES)} classes"):
        task.run(create_backbone("deit_micro"), task.load(root, SEG, None), SEG, ctx(tmp_path / "w"))


def test_coco_audit_counts_skips_and_names_broken_files(det_root, tmp_path, caplog):
    root = _copy(det_root, tmp_path)
    ann = root / "annotations" / "instances_train2017.json"
    coco = json.loads(ann.read_text())
    first = coco["annotations"][0]
    coco["annotations"] += [
        dict(first, id=10_001, bbox=[5.0, 5.0, 0.0, 3.0], area=0.0),  # degenerate
        dict(first, id=10_002, bbox=[500.0, 500.0, 10.0, 10.0], area=100.0),  # outside the 64 px image
    ]
    ann.write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING, logger="pela_bench"):
        counts = audit_coco(ann, root / "train2017")
    assert counts["degenerate"] == 1 and counts["outside_image"] == 1
    assert "2 of" in caplog.text and "instances_train2017.json" in caplog.text

    for broken, needle in ((dict(first, id=10_003, image_id=999_999), "unknown image 999999"),
                           (dict(first, id=10_004, bbox=[1.0, 2.0, 3.0]), "annotation 10004 has no valid bbox"),
                           ({k: v for k, v in first.items() if k != "bbox"}, "has no valid bbox")):
        ann.write_text(json.dumps(dict(coco, annotations=coco["annotations"] + [broken])))
        with pytest.raises(PelaBenchError, match=needle):
            audit_coco(ann, root / "train2017")
    image = {k: v for k, v in coco["images"][0].items() if k != "width"}
    ann.write_text(json.dumps(dict(coco, images=[image] + coco["images"][1:])))
    with pytest.raises(PelaBenchError, match="instances_train2017.json: image entry .* lacks one of"):
        audit_coco(ann, root / "train2017")

    ann.write_text("{not json")
    with pytest.raises(PelaBenchError, match="cannot parse .*instances_train2017.json"):
        audit_coco(ann, root / "train2017")

    ann.unlink()
    with pytest.raises(PelaBenchError, match="instances_train2017.json not found"):
        load_det_data(root)


def test_missing_coco_image_is_named(det_root, tmp_path):
    root = _copy(det_root, tmp_path)
    victim = sorted((root / "val2017").glob("*.jpg"))[0]
    victim.unlink()
    with pytest.raises(PelaBenchError, match=victim.name):
        load_det_data(root)


def test_image_size_differing_from_its_annotation_is_an_error():
    from tasks.detection import _register

    _register()
    from mmdet.registry import TRANSFORMS
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmdet"):
        check = TRANSFORMS.build(dict(type="CheckDetSample"))
    results = {"img": np.zeros((64, 48, 3), np.uint8), "img_path": "x.jpg", "height": 64, "width": 48}
    assert check.transform(dict(results)) is not None
    with pytest.raises(PelaBenchError, match=r"x\.jpg: image is 48x64 but its annotation file records 64x64"):
        check.transform(dict(results, width=64))


# -- the contract, without a fine-tune ---------------------------------------------------


def test_schedules_per_budget_and_input_size():
    for task, schedules in ((SegmentationTask(), SEG_SCHEDULES), (DetectionTask(), DET_SCHEDULES)):
        assert isinstance(task, MMTask) and task.fine_tunes and task.needs == ("pyramid",)
        assert task.schedules is schedules and {"tiny", "smoke", "paper"} <= set(schedules)
        for budget, s in schedules.items():
            assert task.schedule(budget) is s and s.synthetic_train >= 1 and s.synthetic_val >= 1
            assert task.synthetic_spec(s, None) == {"n_train": s.synthetic_train, "n_val": s.synthetic_val,
                                                    "img_size": s.input_size, "generator": GENERATOR_VERSION,
                                                    "labels": DENSE_LABEL_VERSION}
            assert task.input_size(s, None) == s.input_size
        assert schedules["tiny"].synthetic_train < schedules["smoke"].synthetic_train
    # the segmentation crop, or the detection test scale's short side
    assert SEG_SCHEDULES["paper"].input_size == 512 and SEG.input_size == 64
    assert DET_SCHEDULES["paper"].input_size == 800 and DET.input_size == 80
    assert SEG_SCHEDULES["paper"].length == 160_000 and DET_SCHEDULES["paper"].by_epoch
    assert "iterations, batch 16" in SegmentationTask().describe_schedule(SEG_SCHEDULES["paper"])
    assert "36 epochs" in DetectionTask().describe_schedule(DET_SCHEDULES["paper"])


def test_small_backbones_take_the_small_schedules():
    for task, schedules, small in ((SegmentationTask(), SEG_SCHEDULES, SEG_SMALL_SCHEDULES),
                                   (DetectionTask(), DET_SCHEDULES, DET_SMALL_SCHEDULES)):
        assert task.small_schedules is small
        assert task.schedule("smoke", small=True) is small["smoke"] is not schedules["smoke"]
        assert task.schedule("smoke") is schedules["smoke"]
        # a budget without a small schedule keeps its own for every backbone
        assert task.schedule("tiny", small=True) is schedules["tiny"]
        assert task.schedule("paper", small=True) is schedules["paper"]
        # ranked rows: long enough to leave the leaderboard's pipeline-check section, on a fixed backbone
        assert small["smoke"].length >= 50 and small["smoke"].freeze_backbone
        assert not any(s.freeze_backbone for s in schedules.values())
        with pytest.raises(PelaBenchError, match="no schedule for budget 'huge'"):
            task.schedule("huge", small=True)


def test_colour_jitter_is_off_where_colour_is_the_label():
    from tasks.segmentation import _pipelines

    def jitters(s) -> bool:
        train, test = _pipelines(s, len(SEG_CLASSES))
        assert all(t["type"] != "PhotoMetricDistortion" for t in test)
        return any(t["type"] == "PhotoMetricDistortion" for t in train)

    # the paper's ADE20K recipe keeps it; the CPU-sized probe on the hue x fill world drops it
    assert all(jitters(s) for s in SEG_SCHEDULES.values())
    assert not jitters(SEG_SMALL_SCHEDULES["smoke"])


def test_a_frozen_backbone_trains_only_the_neck_and_the_head(seg_root, tmp_path):
    import dataclasses

    task = SegmentationTask()
    frozen = dataclasses.replace(SEG, freeze_backbone=True, length=2, lr=1e-2)
    data = task.load(seg_root, frozen, None)
    student = create_backbone("deit_micro")
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    res = task.run(student, data, frozen, ctx(tmp_path / "work"))
    body = res.model.backbone.body
    assert not any(p.requires_grad for p in body.model.parameters())
    after = body.model.state_dict()  # the classifier dropped, the rest as the method delivered it
    assert set(after) == set(before) - {"head.weight", "head.bias"}
    assert all(torch.equal(before[k], after[k]) for k in after)
    # the neck attach_pyramid added and the heads did train
    assert all(p.requires_grad for p in body.pyramid_neck.parameters())
    assert all(p.requires_grad for p in res.model.decode_head.parameters())
    # the default fine-tunes the network too
    moved = task.run(create_backbone("deit_micro"), data, dataclasses.replace(frozen, freeze_backbone=False),
                     ctx(tmp_path / "work-ft"))
    assert not all(torch.equal(before[k], v) for k, v in moved.model.backbone.body.model.state_dict().items())


def test_detector_widths_follow_the_schedule():
    import dataclasses

    narrow = dataclasses.replace(DET, neck_channels=32, roi_fc_channels=64)
    model = build_detector(create_backbone("swin_micro"), 16, narrow)
    assert {c.conv.out_channels for c in model.neck.fpn_convs} == {32}
    assert model.rpn_head.rpn_conv.in_channels == 32
    for head in model.roi_head.bbox_head:
        assert head.shared_fcs[0].out_features == 64 and head.fc_cls.out_features == 17
    assert {h.convs[0].conv.in_channels for h in model.roi_head.mask_head} == {32}
    wide = build_detector(create_backbone("swin_micro"), 16, DET)
    assert {c.conv.out_channels for c in wide.neck.fpn_convs} == {256}
    assert wide.roi_head.bbox_head[0].shared_fcs[0].out_features == 1024


@pytest.mark.parametrize("field,value", [("length", 0), ("batch_size", 0), ("synthetic_train", 0),
                                         ("synthetic_val", 0), ("latency_repeats", 0), ("lr", 0.0),
                                         ("head_channels", 0), ("neck_channels", 0), ("roi_fc_channels", 0)])
def test_schedule_values_are_checked(field, value):
    kwargs = dict(by_epoch=False, length=1, batch_size=1, lr=1e-4, weight_decay=0.0, warmup_iters=1,
                  img_scale=(64, 64))
    MMSchedule(**kwargs)
    with pytest.raises(PelaBenchError, match=field):
        MMSchedule(**{**kwargs, field: value})


def test_loaders_take_the_train_batch_and_the_validation_subset(seg_root, det_root):
    for task, root, s in ((SegmentationTask(), seg_root, SEG), (DetectionTask(), det_root, DET)):
        data = task.load(root, s, None)
        train, test = task.loaders(data, s, workers=0)
        assert train["batch_size"] == s.batch_size and train["num_workers"] == 0
        assert test["batch_size"] == 1 and test["dataset"]["indices"] == s.val_subset
        train, _ = task.loaders(data, s, workers=2, train_batch=3)
        assert train["batch_size"] == 3 and train["num_workers"] == 2 and train["persistent_workers"]
        assert str(root) == train["dataset"]["data_root"]
    seg = SegmentationTask().load(seg_root, SEG, None)
    assert SegmentationTask().loaders(seg, SEG, workers=0)[0]["dataset"]["type"] == "SyntheticADEDataset"
    assert SegmentationTask().evaluator(seg, SEG) == dict(type="IoUMetric", iou_metrics=["mIoU"])
    det = DetectionTask().load(det_root, DET, None)
    # a validation subset is scored on the images evaluated; the full split by mmdet's own metric
    assert DetectionTask().evaluator(det, DET)["type"] == "EvaluatedImagesCocoMetric"
    full = MMSchedule(**{**{f: getattr(DET, f) for f in DET.__dataclass_fields__}, "val_subset": None})
    assert DetectionTask().evaluator(det, full)["type"] == "CocoMetric"
    assert "indices" not in DetectionTask().loaders(det, full, workers=0)[1]["dataset"]


def test_postprocess_names_and_scales_the_metrics():
    seg = SegmentationTask()
    assert seg.postprocess({"mIoU": 41.5, "mAcc": 50.0, "aAcc": 80.0, "extra": 1.0}, SEG) == \
        {"mIoU": 41.5, "mAcc": 50.0, "aAcc": 80.0}
    with pytest.raises(PelaBenchError, match="no mIoU"):
        seg.postprocess({"aAcc": 80.0}, SEG)
    det = DetectionTask()
    raw = {"coco/bbox_mAP": 0.5, "coco/bbox_mAP_50": 0.75, "coco/bbox_mAP_75": 0.25,
           "coco/segm_mAP": -1.0, "coco/segm_mAP_50": 0.1, "coco/segm_mAP_75": 0.0}
    out = det.postprocess(raw, DET)
    assert out["AP_box"] == pytest.approx(50.0) and out["AP50_box"] == pytest.approx(75.0)
    assert np.isnan(out["AP_mask"]) and out["AP50_mask"] == pytest.approx(10.0)
    assert set(out) == {m.name for m in det.metrics}
    # no box kept on any image: every AP is 0
    assert det.postprocess({}, DET) == {m.name: 0.0 for m in det.metrics}
    with pytest.raises(PelaBenchError, match="no box AP"):
        det.postprocess({"coco/segm_mAP": 0.1}, DET)


def test_trainable_copy_leaves_the_student_alone():
    student = create_backbone("deit_micro").eval()
    for p in student.parameters():
        p.requires_grad_(False)
    copy = trainable_copy(student)
    assert copy is not student and copy.training and not student.training
    assert all(p.requires_grad for p in copy.parameters())
    assert not any(p.requires_grad for p in student.parameters())
    copy.attach_pyramid()
    assert student.pyramid_neck is None
