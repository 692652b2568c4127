"""The one stage cache: spec -> hash -> reuse or compute -> atomic save.

Data, teachers, students and result rows all go through it. A stage's folder is
``<out>/<kind>/<name>-<hash>/``; its ``stage.json`` (the spec, the hash and what
the stage reported) is written last and atomically, so a folder without one is
unfinished and is computed again, resuming from whatever checkpoint the stage
left inside it.

In a distributed run every rank computes a collective stage (training, sharded
evaluation) while rank 0 alone takes the lock, writes the marker and decides
whether the stage is finished; a non-collective stage (data generation) runs on
rank 0 while the others wait.
"""

from __future__ import annotations

import fcntl
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common import distributed
from benchmark.config import config_hash, json_default
from common.io import atomic_write_text

log = logging.getLogger("pela_bench")

MARKER = "stage.json"


@dataclass(frozen=True)
class Stage:
    kind: str
    name: str
    spec: dict[str, Any]
    hash: str
    dir: Path

    def done(self) -> dict[str, Any] | None:
        """What the finished stage reported, or None while it is unfinished."""
        path = self.dir / MARKER
        if not path.is_file():
            return None
        return json.loads(path.read_text())["report"]


class StageCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, kind: str, name: str, spec: dict[str, Any]) -> Stage:
        h = config_hash(spec)
        return Stage(kind, name, spec, h, self.root / kind / f"{name}-{h}")

    def run(self, stage: Stage, compute: Callable[[Path], dict[str, Any]], *, collective: bool = True
            ) -> dict[str, Any]:
        """The stage's report: read back when finished, else `compute(dir)` and then marked finished.

        `compute` writes its files into the stage folder (atomically, one by one; in a
        distributed run on rank 0 only) and returns a JSON-able report; the marker follows
        only once it returned. `collective`: every rank runs `compute` (it trains or
        evaluates together); otherwise rank 0 alone does. Every rank returns rank 0's report.
        """
        report = distributed.broadcast(stage.done())
        if report is not None:
            log.debug("%s %s: reusing %s", stage.kind, stage.name, stage.dir)
            return report
        if distributed.world().size > 1 and not collective:
            return distributed.main_only(lambda: self._locked_run(stage, compute, lambda r: r))
        return self._locked_run(stage, compute, distributed.broadcast)

    def _locked_run(self, stage: Stage, compute: Callable[[Path], dict[str, Any]],
                    agree: Callable[[Any], Any]) -> dict[str, Any]:
        main = distributed.is_main()
        stage.dir.mkdir(parents=True, exist_ok=True)
        # Jobs sharing one --out take turns on a stage: the second finds it finished, never half done.
        # (An advisory lock for jobs on one machine; the Slurm launcher never gives two jobs one stage.)
        with open(stage.dir / ".lock", "a") as lock:
            if main:
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                report = agree(stage.done() if main else None)
                if report is None:
                    report = compute(stage.dir)
                    if main:
                        self.update(stage, report)
                    report = agree(report)
            finally:
                if main:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        return report

    def update(self, stage: Stage, report: dict[str, Any]) -> None:
        """Mark the stage finished with `report` (or replace the report of a finished one)."""
        stage.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage.dir / MARKER, json.dumps(
            {"kind": stage.kind, "name": stage.name, "hash": stage.hash, "spec": stage.spec, "report": report},
            indent=2, sort_keys=True, default=json_default))
