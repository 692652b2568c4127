"""Run the benchmark suite: backbone x methods x tasks, then write the leaderboard.

With no arguments it runs the embedded default: the synthetic world, a small
DeiT trained from scratch as teacher, and the Table 7 ablation rows on
classification, in about ten minutes on a 2-core CPU.

    python tools/run_suite.py --backbone swin_base --tasks seg,det

runs the dense tasks (UperNet, Cascade Mask R-CNN) for the dense model, PELA,
plain SVD and every baseline that applies, on synthetic ADE20K/COCO-format
scenes unless --seg-root / --det-root point at the real data sets.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from _cli import run_main

from benchmark.config import BUDGETS, DENSE_METHODS, SuiteConfig


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_args(argv: list[str] | None = None) -> tuple[SuiteConfig, bool]:
    d = SuiteConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=d.backbone, help=f"registered backbone (default {d.backbone})")
    p.add_argument("--methods", type=_csv, default=None,
                   help=f"comma-separated methods (default: {','.join(d.methods)}; with --ratio, those that take one)")
    p.add_argument("--tasks", type=_csv, default=d.tasks, help="comma-separated tasks (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=None, help="compression ratio (default: the backbone's paper preset)")
    p.add_argument("--data-root", default=None,
                   help="ImageNet-layout folder for the teacher, pre-training and cls (default: the synthetic world)")
    p.add_argument("--seg-root", default=None, help="ADE20K-layout folder for seg (default: synthetic scenes)")
    p.add_argument("--det-root", default=None, help="COCO-layout folder for det (default: synthetic scenes)")
    p.add_argument("--scale-batch", action="store_true",
                   help="Table 9: also fine-tune each compressed model at the largest batch whose training peak "
                        "memory fits the dense model's (rows '<method>+')")
    p.add_argument("--teacher-weights", default=None, help="'hub' or a checkpoint path (default: train the teacher)")
    p.add_argument("--out", default=d.out, help="checkpoints, generated data (default: %(default)s)")
    p.add_argument("--results", default=d.results, help="results store and tables (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--budget", choices=BUDGETS, default=d.budget)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N] (default: %(default)s)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --set alpha=0.5 --set rwp_form=linear")
    p.add_argument("--list", action="store_true", help="list backbones, methods and tasks, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.list:
        from backbones import list_backbones
        from methods import list_methods
        from tasks import list_tasks

        print("backbones:", ", ".join(list_backbones()))
        print("methods:  ", ", ".join(list_methods()))
        print("tasks:    ", ", ".join(list_tasks()))
        raise SystemExit(0)
    options = _options(a.options)
    method_names = a.methods
    if method_names is None:
        method_names = d.methods
        from tasks import DENSE_TASKS, create_task

        if all(create_task(t).name in DENSE_TASKS for t in a.tasks):
            method_names = DENSE_METHODS  # Tables 2 and 3: the dense model, PELA, plain SVD, the baselines
        # A ratio or a full-rank list is for the factorising methods; named others are refused.
        if a.ratio is not None or "keep_full_rank" in options:
            from methods import method_class

            method_names = tuple(m for m in method_names if method_class(m).takes_ratio)
            logging.getLogger("pela_bench").info("factorisation set: running %s", ", ".join(method_names))
    cfg = SuiteConfig(
        backbone=a.backbone, methods=method_names, tasks=a.tasks, ratio=a.ratio, data_root=a.data_root,
        seg_root=a.seg_root, det_root=a.det_root, scale_batch=a.scale_batch,
        teacher_weights=a.teacher_weights, out=a.out, results=a.results, seed=a.seed, budget=a.budget,
        device=a.device, method_options=options,
    )
    return cfg, a.quiet


def main() -> int:
    cfg, quiet = parse_args()
    from benchmark.runner import SuiteRunner

    start = time.time()
    runner = SuiteRunner(cfg, progress=not quiet)
    rows = runner.run()
    log = logging.getLogger("pela_bench")
    log.info("%d rows in %.0f s; leaderboard: %s/leaderboard.md", len(rows), time.time() - start, cfg.results)
    return 0


if __name__ == "__main__":
    run_main(main)
