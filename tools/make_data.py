"""Write a task's synthetic scene world in its real data set's on-disk format.

    python tools/make_data.py --task cls --out data/synthetic --train 3200 --val 800 --seed 0
    python tools/make_data.py --task seg --out data/synthetic-seg --train 2000 --val 500
    python tools/make_data.py --task det --out data/synthetic-det --train 2000 --val 500
    python tools/make_data.py --task retrieval --out data/synthetic-retrieval --train 300 --val 200
    python tools/make_data.py --task vlp --out data/synthetic-vlp --train 2000

cls writes the ImageNet layout (64 px), seg the ADE20K layout and det the COCO
layout (128 px), retrieval and vlp ALBEF's JSON files with captions (64 px; for
retrieval --val sizes both the validation and the test split). Unset sizes come from the task's schedule for --budget. Point
the suite at the result with --data TASK=DIR.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from _cli import run_main

from benchmark.config import BUDGETS


def main() -> int:
    from tasks import create_task, list_tasks

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list_tasks(), default="cls")
    p.add_argument("--out", default="data/synthetic")
    p.add_argument("--budget", choices=BUDGETS, default="smoke", help="whose schedule gives the default sizes")
    p.add_argument("--train", type=int, default=None, help="training scenes (default: the budget's)")
    p.add_argument("--val", type=int, default=None, help="validation scenes (default: the budget's)")
    p.add_argument("--img-size", type=int, default=None, help="image side in px (default: 64 cls, 128 seg/det)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    task = create_task(a.task)
    spec = task.synthetic_spec(task.schedule(a.budget), None)
    for key, value in (("n_train", a.train), ("n_val", a.val), ("img_size", a.img_size)):
        if value is not None:
            spec[key] = value
    task.write_synthetic(Path(a.out), spec, a.seed, progress=True)
    logging.getLogger("pela_bench").info("wrote %s (%s)", a.out, task.layout)
    return 0


if __name__ == "__main__":
    run_main(main)
