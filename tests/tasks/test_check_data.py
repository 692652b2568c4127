"""`check_data` (``--check-data``): every file of a data set is decoded once, the first bad one is named.

The data are written by each task's own `write_synthetic`, in the real data set's layout
(ImageNet folder, ADE20K, COCO), at tiny sizes.
"""

import shutil

import pytest

from common.errors import PelaBenchError
from tasks import create_task

SPECS = {
    "cls": {"n_train": 16, "n_val": 16, "img_size": 32},
    "seg": {"n_train": 2, "n_val": 2, "img_size": 64},
    "det": {"n_train": 2, "n_val": 2, "img_size": 64},
}
# What a clean check counts per split (seg reads images and label maps).
COUNTS = {
    "cls": {"train": 16, "val": 16},
    "seg": {"training": 4, "validation": 4},
    "det": {"train2017": 2, "val2017": 2},
}
# Tasks whose data sets this small are held in memory, decoded when they load (`tasks.images`).
DECODED_AT_LOAD = {"cls"}
# One file of each kind a check must read: (task, glob under the root); the last match is damaged.
VICTIMS = [
    ("cls", "val/*/*.png"),
    ("cls", "train/*/*.png"),
    ("seg", "images/validation/*.jpg"),
    ("seg", "annotations/training/*.png"),
    ("det", "val2017/*.jpg"),
    ("det", "train2017/*.jpg"),
]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    out = {}
    for name, spec in SPECS.items():
        root = tmp_path_factory.mktemp(name) / "data"
        create_task(name).write_synthetic(root, dict(spec), seed=0, progress=False)
        out[name] = root
    return out


def _load(name, root):
    task = create_task(name)
    return task, task.load(root, task.schedule("tiny"), SPECS[name]["img_size"])


@pytest.mark.parametrize("name", sorted(SPECS))
def test_clean_synthetic_data_passes(roots, name):
    task, data = _load(name, roots[name])
    task.check_root(roots[name])
    assert data.provenance == "synthetic"
    assert task.check_data(data, progress=False) == COUNTS[name]


@pytest.mark.parametrize("name,pattern", VICTIMS)
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_file_is_named(roots, tmp_path, name, pattern, damage):
    root = tmp_path / "data"
    shutil.copytree(roots[name], root)
    victim = sorted(root.glob(pattern))[-1]
    raw = victim.read_bytes()
    victim.write_bytes(b"\x89PNG not an image at all" if damage == "garbage" else raw[: len(raw) // 2])
    if name in DECODED_AT_LOAD:  # a small image folder is decoded into memory as it loads
        with pytest.raises(PelaBenchError, match="cannot read image") as e:
            _load(name, root)
    else:  # loading only checks the layout, so it still succeeds; the check reads every file
        task, data = _load(name, root)
        with pytest.raises(PelaBenchError, match="cannot read image") as e:
            task.check_data(data, progress=False)
    assert str(victim) in str(e.value)
