"""Generate the synthetic scene world in the real data sets' on-disk formats.

    python tools/make_data.py --out data/synthetic --train 3200 --val 800 --seed 0
    python tools/make_data.py --task seg --out data/synthetic-seg --train 2000 --val 500
    python tools/make_data.py --task det --out data/synthetic-det --train 2000 --val 500

--task cls writes the ImageNet layout (64 px), seg the ADE20K layout and det the
COCO layout (128 px, the dense world).
"""

from __future__ import annotations

import argparse
import logging

from _cli import run_main

from tasks.synthetic import (
    WorldConfig,
    dense_world,
    write_classification,
    write_detection,
    write_segmentation,
)

LAYOUTS = {
    "cls": "ImageNet layout: train/ and val/, one folder per class",
    "seg": "ADE20K layout: images/ and annotations/, {training,validation}/ in each",
    "det": "COCO layout: train2017/, val2017/ and annotations/instances_*.json",
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=tuple(LAYOUTS), default="cls")
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--train", type=int, default=None, help="training scenes (default: 3200 cls, 2000 seg/det)")
    p.add_argument("--val", type=int, default=None, help="validation scenes (default: 800 cls, 500 seg/det)")
    p.add_argument("--img-size", type=int, default=None, help="image side in px (default: 64 cls, 128 seg/det)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    # Unset counts fall through to each writer's own defaults.
    counts = {k: v for k, v in (("n_train", a.train), ("n_val", a.val)) if v is not None}
    if a.task == "cls":
        root = write_classification(a.out, seed=a.seed, world=WorldConfig(img_size=a.img_size or 64), **counts)
    else:
        writer = write_segmentation if a.task == "seg" else write_detection
        root = writer(a.out, seed=a.seed, world=dense_world(a.img_size or 128), **counts)
    logging.getLogger("pela_bench").info("wrote %s (%s)", root, LAYOUTS[a.task])
    return 0


if __name__ == "__main__":
    run_main(main)
