"""The dense writers: ADE20K and COCO layouts of the synthetic world, checked without mmseg/mmdet."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.synthetic import (
    DET_CLASSES,
    MARKER_FILE,
    SEG_CLASSES,
    SceneObject,
    WorldConfig,
    class_names,
    clip_polygon,
    dense_world,
    polygon_area,
    read_marker,
    render_scene,
    segmentation_map,
    write_classification,
    write_detection,
    write_segmentation,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    return write_segmentation(tmp_path_factory.mktemp("seg") / "ade", n_train=8, n_val=4, progress=False)


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    return write_detection(tmp_path_factory.mktemp("det") / "coco", n_train=8, n_val=4, progress=False)


def test_clip_polygon_cuts_to_the_rectangle():
    half_out = [(-5.0, 10.0), (5.0, 10.0), (5.0, 20.0), (-5.0, 20.0)]
    clipped = clip_polygon(half_out, 100, 100)
    assert polygon_area(clipped) == pytest.approx(50.0)
    assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in clipped)
    corner = [(90.0, 90.0), (110.0, 90.0), (110.0, 110.0), (90.0, 110.0)]  # a quarter inside
    assert polygon_area(clip_polygon(corner, 100, 100)) == pytest.approx(100.0)
    inside = [(1.0, 1.0), (4.0, 1.0), (1.0, 5.0)]
    assert clip_polygon(inside, 100, 100) == inside
    assert clip_polygon([(-9.0, -9.0), (-1.0, -9.0), (-1.0, -1.0)], 100, 100) == []


def test_dense_world_and_classes():
    # The classification world at the dense size: the dense labels ask what the teacher was taught.
    assert dense_world() == WorldConfig(img_size=128) and dense_world(64) == WorldConfig()
    assert SEG_CLASSES == ("background", *class_names()) and len(SEG_CLASSES) == 17
    assert DET_CLASSES == tuple(class_names())


def test_segmentation_layout_and_labels(seg_root):
    marker = read_marker(seg_root)
    assert marker["provenance"] == "synthetic" and marker["task"] == "seg"
    assert marker["classes"] == list(SEG_CLASSES) and marker["world"]["img_size"] == 128
    for folder, n in (("training", 8), ("validation", 4)):
        images = sorted((seg_root / "images" / folder).glob("*.jpg"))
        labels = sorted((seg_root / "annotations" / folder).glob("*.png"))
        assert len(images) == n and [p.stem for p in images] == [p.stem for p in labels]
        for img_path, lbl_path in zip(images, labels):
            img, lbl = Image.open(img_path), Image.open(lbl_path)
            assert img.mode == "RGB" and lbl.mode == "L" and img.size == lbl.size == (128, 128)
            values = set(np.unique(np.asarray(lbl)).tolist())
            assert values <= set(range(1, len(SEG_CLASSES) + 1))  # never 0: every pixel is labelled
            assert 1 in values  # background


def _square(colour: str, pattern: str, x0: float, y0: float, side: float, z: int) -> SceneObject:
    poly = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    return SceneObject("square", colour, pattern, (x0 + side / 2, y0 + side / 2), side / 2, poly, z)


def test_segmentation_map_labels_the_subject_by_class():
    background = SEG_CLASSES.index("background") + 1
    subject = _square("blue", "striped", 10, 10, 30, z=1)
    below = _square("red", "solid", 0, 0, 20, z=0)  # painted first: the subject covers it
    above = _square("green", "hollow", 30, 30, 20, z=2)  # painted last: it hides the subject's corner
    lbl = np.asarray(segmentation_map([subject, below, above], 64))
    cls = SEG_CLASSES.index("blue_striped") + 1
    assert lbl[20, 20] == cls  # the subject, also where it covers a distractor
    assert lbl[5, 5] == background  # a distractor is background, never a class of its own
    assert lbl[35, 35] == background  # the occluder takes the subject's pixels back
    assert lbl[45, 45] == background and lbl[60, 60] == background
    assert set(np.unique(lbl).tolist()) == {background, cls}


def test_segmentation_map_of_rendered_scenes():
    world = dense_world()
    for i in range(20):
        _, objects = render_scene(0, "seg-train", i, world)
        assert sorted(o.z for o in objects) == list(range(len(objects)))
        lbl = np.asarray(segmentation_map(objects, world.img_size))
        cls = SEG_CLASSES.index(objects[0].label) + 1
        assert set(np.unique(lbl).tolist()) <= {1, cls}
        if objects[0].z == len(objects) - 1:  # painted last, so its centre is never covered
            cx, cy = (round(c) for c in objects[0].centre)
            assert lbl[cy, cx] == cls


def test_segmentation_is_deterministic(seg_root, tmp_path):
    again = write_segmentation(tmp_path / "ade", n_train=2, n_val=1, progress=False)
    for rel in ("annotations/training/000001.png", "images/training/000001.jpg", "annotations/validation/000000.png"):
        assert (again / rel).read_bytes() == (seg_root / rel).read_bytes()


def test_dense_scenes_differ_from_classification():
    cls_img, _ = render_scene(0, "train", 0, dense_world())
    seg_img, _ = render_scene(0, "seg-train", 0, dense_world())
    det_img, _ = render_scene(0, "det-train", 0, dense_world())
    a, b, c = (np.asarray(x) for x in (cls_img, seg_img, det_img))
    assert not np.array_equal(a, b) and not np.array_equal(b, c)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_detection_coco_annotations(det_root):
    from pycocotools.coco import COCO

    marker = read_marker(det_root)
    assert marker["provenance"] == "synthetic" and marker["task"] == "det"
    for folder, n in (("train2017", 8), ("val2017", 4)):
        raw = json.loads((det_root / "annotations" / f"instances_{folder}.json").read_text())
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(raw)
        coco = COCO(str(det_root / "annotations" / f"instances_{folder}.json"))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"], c["supercategory"]) for c in cats] == \
            [(k + 1, s, "subject") for k, s in enumerate(class_names())]
        img_ids = coco.getImgIds()
        assert sorted(img_ids) == list(range(1, n + 1))
        ann_ids = [a["id"] for a in raw["annotations"]]
        assert len(ann_ids) == len(set(ann_ids)) == n  # the subject of each scene; distractors are background
        for img in coco.loadImgs(img_ids):
            path = det_root / folder / img["file_name"]
            assert path.is_file() and Image.open(path).size == (img["width"], img["height"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            _, objects = render_scene(0, "det-" + folder[:-4], img["id"] - 1, dense_world())
            assert [a["category_id"] for a in anns] == [DET_CLASSES.index(objects[0].label) + 1]
            for ann in anns:
                x, y, w, h = ann["bbox"]
                assert w >= 1 and h >= 1 and ann["iscrowd"] == 0
                assert x >= 0 and y >= 0
                assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
                mask = coco.annToMask(ann)
                assert mask.shape == (img["height"], img["width"])
                assert mask.sum() == pytest.approx(ann["area"], rel=0.2)


def test_detection_is_deterministic(det_root, tmp_path):
    again = write_detection(tmp_path / "coco", n_train=8, n_val=4, progress=False)
    for rel in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                "train2017/000000000003.jpg", MARKER_FILE):
        assert (again / rel).read_bytes() == (det_root / rel).read_bytes()


def test_classification_marker_still_reads(tmp_path):
    root = write_classification(tmp_path / "cls", n_train=16, n_val=16, progress=False)
    assert read_marker(root)["provenance"] == "synthetic"


def _make_data(*args):
    r = subprocess.run([sys.executable, "tools/make_data.py", *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-1500:]
    return r


@pytest.mark.parametrize("task,expected", [("det", "annotations/instances_val2017.json")])
def test_make_data_cli(task, expected, tmp_path):
    out = tmp_path / task
    _make_data("--task", task, "--out", out, "--train", 2, "--val", 1)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["task"] == task and marker["n_train"] == 2 and marker["world"]["img_size"] == 128
    assert (out / expected).is_file()


def test_make_data_writes_the_ade_layout(tmp_path):
    """tools/make_data.py --task seg: ADE20K's folders, one label map per image, the marker last."""
    out = tmp_path / "ade"
    _make_data("--task", "seg", "--out", out, "--train", 4, "--val", 2)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["provenance"] == "synthetic" and marker["task"] == "seg" and marker["format"] == "ade20k"
    assert marker["n_train"] == 4 and marker["n_val"] == 2 and marker["classes"] == list(SEG_CLASSES)
    assert marker["world"]["img_size"] == 128 and marker["reduce_zero_label"] is True  # the smoke crop
    assert sorted(p.relative_to(out).as_posix() for p in out.iterdir()) == ["annotations", "images", MARKER_FILE]
    for folder, n in (("training", 4), ("validation", 2)):
        assert sorted(p.name for p in (out / "images" / folder).iterdir()) == [f"{i:06d}.jpg" for i in range(n)]
        assert sorted(p.name for p in (out / "annotations" / folder).iterdir()) == [f"{i:06d}.png" for i in range(n)]
    assert (out / "annotations/validation/000000.png").is_file()
    lbl = Image.open(out / "annotations" / "training" / "000003.png")
    assert lbl.mode == "L" and lbl.size == Image.open(out / "images" / "training" / "000003.jpg").size == (128, 128)
    # the same scenes as the writer itself
    again = write_segmentation(tmp_path / "direct", n_train=4, n_val=2, progress=False)
    assert (again / "annotations/training/000003.png").read_bytes() == \
        (out / "annotations/training/000003.png").read_bytes()
    # and the segmentation task reads it as synthetic data
    from tasks import create_task

    task = create_task("seg")
    data = task.load(out, task.schedule("smoke"), None)
    assert data.provenance == "synthetic" and data.content.classes == SEG_CLASSES
