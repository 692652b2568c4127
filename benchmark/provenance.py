"""What produced a result: the code version and the machine, recorded in every row."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
# What decides a row's numbers; `results/` (which every run rewrites) does not make the code dirty.
# Code that only formats the store (tables, figures; `reports/` is outside `_SOURCE` already) is left
# out, so rewriting a table does not make the rows it reads look stale.
_REPORTING = ("benchmark/tables.py", "benchmark/stats.py", "benchmark/tradeoff.py", "tools/make_tables.py")
_SOURCE = ("backbones", "benchmark", "common", "methods", "tasks", "tools", "pyproject.toml")
_EXCLUDE = tuple(f":(exclude){path}" for path in _REPORTING)


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of this checkout and whether its source differs from it, else the package version."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != _REPO:
            raise OSError("installed inside another repository")
        status = git("status", "--porcelain", "--untracked-files=no", "--", *_SOURCE, *_EXCLUDE)
        # The source as it is (committed files plus any uncommitted diff): a commit that only adds
        # results, or touches README or tests, keeps it, so published rows do not look stale.
        files = [line for line in git("ls-tree", "-r", "HEAD", "--", *_SOURCE).splitlines()
                 if line.split("\t", 1)[-1] not in _REPORTING]
        source = "\n".join(files) + git("diff", "HEAD", "--", *_SOURCE, *_EXCLUDE)
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status),
                "source": hashlib.sha1(source.encode()).hexdigest()[:12]}
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"package": version("pela-bench")}
        except PackageNotFoundError:
            return {"package": "unknown"}


def code_label(v: dict[str, Any] | None) -> str:
    if not v:
        return "unknown"
    if "commit" in v:
        return v["commit"][:10] + ("+dirty" if v.get("dirty") else "")
    return f"v{v.get('package', '?')}"


def same_code(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two code versions ran the same source (by its hash where both have one)."""
    if not a or not b:
        return False
    if a.get("source") and b.get("source"):
        return a["source"] == b["source"]
    return code_label(a) == code_label(b)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Any = "cpu") -> dict[str, Any]:
    """The CPU, the threads torch computes with, and the GPU of `device` (None on a CPU run)."""
    import torch

    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform()}


def versions() -> dict[str, str]:
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__}
