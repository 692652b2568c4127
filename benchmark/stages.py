"""The one stage cache: spec -> hash -> reuse or compute -> atomic save.

Data, teachers, students and result rows all go through it. A stage's folder is
``<out>/<kind>/<name>-<hash>/``; its ``stage.json`` (the spec, the hash and what
the stage reported) is written last and atomically, so a folder without one is
unfinished and is computed again, resuming from whatever checkpoint the stage
left inside it.
"""

from __future__ import annotations

import fcntl
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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

    def run(self, stage: Stage, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """The stage's report: read back when finished, else `compute(dir)` and then marked finished.

        `compute` writes its files into the stage folder (atomically, one by one) and returns
        a JSON-able report; the marker follows only once it returned.
        """
        report = stage.done()
        if report is not None:
            log.debug("%s %s: reusing %s", stage.kind, stage.name, stage.dir)
            return report
        stage.dir.mkdir(parents=True, exist_ok=True)
        # Jobs sharing one --out take turns on a stage: the second finds it finished, never half done.
        with open(stage.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                report = stage.done()
                if report is None:
                    report = compute(stage.dir)
                    self.update(stage, report)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return report

    def update(self, stage: Stage, report: dict[str, Any]) -> None:
        """Mark the stage finished with `report` (or replace the report of a finished one)."""
        stage.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(stage.dir / MARKER, json.dumps(
            {"kind": stage.kind, "name": stage.name, "hash": stage.hash, "spec": stage.spec, "report": report},
            indent=2, sort_keys=True, default=json_default))
