"""Many processes write one store at once, some killed mid-write: no row lost, none doubled, every file readable.

No lock is taken anywhere (the store must hold on file systems without `flock`);
each writer logs a put only after it returned, so a logged row must be in the store.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import benchmark.store as store_mod
from benchmark.store import ResultStore, row_id

ROOT = Path(__file__).resolve().parents[2]

WRITER = r"""
import os, sys
from benchmark.store import ResultStore
results, writer, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = ResultStore(os.path.join(results, "results.jsonl"))
log = open(os.path.join(results, f"writer{writer}.log"), "a")
for i in range(n):
    # Ids overlap between writers (a row run twice), and rows are big enough to be caught mid-write.
    key = (writer * 7 + i) % 12
    row = {"backbone": "b", "method": f"m{key}", "options": "", "task": "cls", "seed": 0, "teacher_seed": 0,
           "provenance": "synthetic", "budget": "tiny", "config_hash": "h", "metrics": {"top1": float(i)},
           "writer": writer, "i": i, "payload": "x" * 400_000}
    store.put(row, merge=i % 3 == 0)
    log.write(f"{key} {writer} {i}\n"); log.flush(); os.fsync(log.fileno())
"""


def test_concurrent_writers_some_killed_lose_no_row_and_double_none(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    # An old single-file store is imported once, under the writers' feet.
    old = {"backbone": "b", "method": "old", "options": "", "task": "cls", "seed": 0, "teacher_seed": 0,
           "provenance": "synthetic", "budget": "tiny", "config_hash": "h", "metrics": {"top1": 1.0}}
    (results / "results.jsonl").write_text(json.dumps(old) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(results), str(w), "40"], env=env)
             for w in range(6)]
    rng = random.Random(0)
    deadline = time.monotonic() + 120
    while not all((results / f"writer{w}.log").is_file() and (results / f"writer{w}.log").stat().st_size
                  for w in range(6)):  # every writer has put a row: the kills land among the writes
        assert time.monotonic() < deadline, "the writers did not start"
        time.sleep(0.05)
    killed = rng.sample(range(6), 3)
    for w in killed:  # mid-run, most likely mid-write
        time.sleep(rng.uniform(0.05, 0.3))
        procs[w].send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=300)
    assert all(procs[w].returncode == -signal.SIGKILL for w in killed)
    assert all(p.returncode == 0 for w, p in enumerate(procs) if w not in killed)

    store = ResultStore(results / "results.jsonl")
    store.merge()
    merged = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    ids = [row_id(r) for r in merged]
    assert len(ids) == len(set(ids)), "a row is in the merged file twice"
    assert store.rows() == merged
    by_method = {r["method"]: r for r in merged}
    assert "old" in by_method  # the imported row survived every concurrent write
    logged = [line.split() for w in range(6) for line in (results / f"writer{w}.log").read_text().splitlines()]
    assert len(logged) > 40
    for key, writer, i in logged:
        row = by_method.get(f"m{key}")
        assert row is not None, f"row m{key} (writer {writer}, put {i}) was lost"
        assert len(row["payload"]) == 400_000  # complete, whichever writer's version won
    # Killed writers may leave a temporary file: never read, and never a row.
    for tmp in (results / "rows").glob(".*"):
        assert tmp.name.endswith(".tmp")
    assert len(list((results / "rows").glob("*.json"))) == len(merged)
    # A merge clears killed writers' leftovers once they are stale (here: at once).
    monkeypatch.setattr(store_mod, "STALE_TMP_SECONDS", -1)
    (results / "rows" / ".dead.json.abc.tmp").write_text("{half")
    (results / ".results.jsonl.abc.tmp").write_text("{half")
    store.merge()
    assert not list((results / "rows").glob(".*")) and not list(results.glob(".*.tmp"))
