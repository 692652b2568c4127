"""Let mmengine resume its own checkpoints under torch's safe loader.

mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch 2.6 that
means the safe unpickler, which refuses the few non-tensor objects mmengine puts in
a checkpoint's metadata: its loss-history buffers and the numpy arrays inside them.
Allow-listing exactly those keeps the safety check on for everything else.

One more object stands in the way: each history buffer also pickles mmengine's
registry of statistics functions, and functions unpickle through ``getattr``,
which must never be allow-listed (it would admit any attribute of any allowed
class). The buffers rebuild that registry themselves when loaded, so we stop
writing it when it holds only mmengine's four defaults.
"""

from __future__ import annotations

import numpy as np
import torch


def _numpy_globals() -> list:
    # The pickled numpy reconstructors moved from numpy.core (1.x) to numpy._core (2.x).
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    dtype_classes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def allowed_globals() -> list:
    from mmengine.logging.history_buffer import HistoryBuffer

    return [HistoryBuffer, *_numpy_globals()]


def _lean_getstate(self) -> dict:
    from mmengine.logging.history_buffer import HistoryBuffer

    defaults = {name: getattr(HistoryBuffer, name) for name in ("min", "max", "current", "mean")}
    state = {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}
    extra = {k: v for k, v in self._statistics_methods.items() if defaults.get(k) is not v}
    if extra:  # a user-registered statistic: keep mmengine's behaviour (a plain torch.load can still read it)
        state["statistics_methods"] = dict(self._statistics_methods)
    return state


def allow_mmengine_checkpoints() -> None:
    from mmengine.logging.history_buffer import HistoryBuffer

    HistoryBuffer.__getstate__ = _lean_getstate
    torch.serialization.add_safe_globals(allowed_globals())
