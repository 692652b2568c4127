"""The results store: one row per backbone x method (with its options and recipe) x task x seed x teacher seed x
provenance x budget.

Many jobs write rows at once (Slurm arrays, several suites sharing `--results`),
often on network file systems where `flock` is not honoured. So no writer ever
rewrites another's rows: each row is its own file, ``rows/<digest of its id>.json``,
written to a unique temporary name and renamed into place (rename is atomic on
POSIX file systems and on NFS, within one directory). A row that runs again
replaces its own file; two rows can never share one; a writer killed mid-write
leaves a temporary file that readers skip and the next merge removes once stale.

``results.jsonl`` is the merged view every table reads: all row files, oldest
first, written atomically by `merge` (after every row and at the end of a run or
launch). A merge that raced a newer write may miss that row until the next merge
catches up: the row files are the record, the merged file never loses one.

A folder with only a ``results.jsonl`` (a store from before row files, or one
copied by hand) is read as it is, and imported into row files on the first write.

The store is what a run publishes: the suite never reads a row back from it to
skip work; reuse comes from the stage outputs under `--out` (`benchmark.stages`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from common.errors import PelaBenchError
from common.io import atomic_write_text

log = logging.getLogger("pela_bench")

ROW_KEY_FIELDS = ("backbone", "method", "options", "task", "seed", "teacher_seed", "provenance", "budget")
ROWS_DIR = "rows"
# A temporary file older than this is a killed writer's, never one still being written.
STALE_TMP_SECONDS = 3600


def teacher_seed(row: dict[str, Any]) -> int:
    """The seed of the row's teacher and data; rows stored before the field existed used the row's own seed."""
    return row.get("teacher_seed", row.get("seed"))


def row_id(row: dict[str, Any]) -> str:
    """What a row is; a method's recipe (PELA's "official" or "paper") is part of it, so rows of different
    recipes never replace each other."""
    key = "/".join(str(teacher_seed(row) if k == "teacher_seed" else row.get(k, "")) for k in ROW_KEY_FIELDS)
    return key + (f"/recipe={row['recipe']}" if row.get("recipe") else "")


def row_file_name(row: dict[str, Any]) -> str:
    return hashlib.sha256(row_id(row).encode()).hexdigest()[:20] + ".json"


def _order(row: dict[str, Any]) -> tuple[str, str]:
    # When it was written, as the single-file store kept them (a rerun row moves to the end); the id breaks ties.
    return str(row.get("timestamp", "")), row_id(row)


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


class ResultStore:
    """`path` is the merged ``results.jsonl``; the row files live in ``rows/`` beside it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.dir = self.path.parent / ROWS_DIR

    def rows(self) -> list[dict[str, Any]]:
        """Every row, oldest first: the row files where they exist, else the merged file alone."""
        if self.dir.is_dir():
            return self._row_files()
        return self._merged()

    def _row_files(self) -> list[dict[str, Any]]:
        rows = []
        for path in sorted(self.dir.glob("*.json")):  # temporary files are dot-named: never matched
            try:
                rows.append(json.loads(path.read_text()))
            except FileNotFoundError:
                continue  # replaced between the listing and the read: its successor is read next time
            except json.JSONDecodeError as exc:
                raise PelaBenchError(f"{path} is not valid JSON ({exc.msg}); delete it or restore it from "
                                     f"{self.path}") from None
        return sorted(rows, key=_order)

    def _merged(self) -> list[dict[str, Any]]:
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

    def put(self, row: dict[str, Any], *, merge: bool = True) -> None:
        """Write (or replace) one row; with `merge`, refresh ``results.jsonl`` after it."""
        missing = [k for k in (*ROW_KEY_FIELDS, "config_hash", "metrics") if k not in row]
        if missing:
            raise ValueError(f"result row lacks {missing}")
        if not self.dir.is_dir():
            self._import_merged()
        atomic_write_text(self.dir / row_file_name(row), _dumps(row) + "\n")
        if merge:
            self.merge()

    def merge(self) -> Path:
        """Write ``results.jsonl`` from the row files (atomically) and clear killed writers' leftovers."""
        if not self.dir.is_dir():
            self._import_merged()
        rows = self._row_files()
        atomic_write_text(self.path, "".join(_dumps(r) + "\n" for r in rows))
        now = time.time()
        for tmp in [*self.dir.glob(".*.tmp"), *self.path.parent.glob(f".{self.path.name}.*.tmp")]:
            try:
                if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                    tmp.unlink()
            except FileNotFoundError:
                pass
        return self.path

    def _import_merged(self) -> None:
        """Row files for a store that has only ``results.jsonl`` (written before row files existed)."""
        rows = self._merged()
        self.dir.mkdir(parents=True, exist_ok=True)
        for row in rows:  # a later duplicate id replaces an earlier one, as the old store's put did
            atomic_write_text(self.dir / row_file_name(row), _dumps(row) + "\n")
        if rows:
            log.info("results store: %d rows of %s written as row files in %s", len(rows), self.path, self.dir)
