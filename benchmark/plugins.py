"""`--import`: modules or files whose tasks, methods or backbones register themselves.

Shared by the CLI and the launcher, whose jobs import the same plugins before they run.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from common.errors import PelaBenchError

log = logging.getLogger("pela_bench")


def import_plugin(spec: str) -> None:
    """Import a module by dotted name or a Python file by path, so its tasks/methods/backbones register."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file():
            if not path.is_file():
                raise PelaBenchError(f"--import {spec}: no such file")
            module_spec = importlib.util.spec_from_file_location(f"pela_bench_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except PelaBenchError:
        raise
    except Exception as exc:  # the plugin's own error: name the plugin, keep the trace in the debug log
        log.debug("--import %s failed", spec, exc_info=True)
        raise PelaBenchError(f"--import {spec}: {type(exc).__name__}: {exc}") from None
