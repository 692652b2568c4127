"""The results store: one JSON line per backbone x method (with its options and recipe) x task x seed x teacher seed x
provenance x budget.

A row is replaced, never duplicated, when its stage runs again. Every write
happens under an exclusive lock on a sibling ``.lock`` file and rewrites the file
atomically, so jobs writing at once never lose each other's rows and a killed
run leaves the previous complete file. (`flock` locks are honoured on local
disks and on NFS v4; on file systems without locking, give each job its own
`--results` and merge the files afterwards.)

The store is what a run publishes: the suite never reads a row back from it to
skip work; reuse comes from the stage outputs under `--out` (`benchmark.stages`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from common.errors import PelaBenchError
from common.io import atomic_write_text

ROW_KEY_FIELDS = ("backbone", "method", "options", "task", "seed", "teacher_seed", "provenance", "budget")


def teacher_seed(row: dict[str, Any]) -> int:
    """The seed of the row's teacher and data; rows stored before the field existed used the row's own seed."""
    return row.get("teacher_seed", row.get("seed"))


def row_id(row: dict[str, Any]) -> str:
    """What a row is; a method's recipe (PELA's "official" or "paper") is part of it, so rows of different
    recipes never replace each other."""
    key = "/".join(str(teacher_seed(row) if k == "teacher_seed" else row.get(k, "")) for k in ROW_KEY_FIELDS)
    return key + (f"/recipe={row['recipe']}" if row.get("recipe") else "")


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PelaBenchError(f"{self.path}:{n} is not valid JSON ({exc.msg})") from None
        return rows

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, row: dict[str, Any]) -> None:
        missing = [k for k in (*ROW_KEY_FIELDS, "config_hash", "metrics") if k not in row]
        if missing:
            raise ValueError(f"result row lacks {missing}")
        rid = row_id(row)
        with self._locked():
            rows = [r for r in self.rows() if row_id(r) != rid] + [row]
            self._write(rows)

    def _write(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_text(self.path, text)
