"""Small pieces shared by every layer: user-facing errors, atomic file writes, seeding,
parameter counting, the shape of a base objective, and the distributed helpers.

`common` sits below `backbones` in the import order, so any layer may use it and it
imports none of them.
"""

from common.errors import PelaBenchError
from common.io import atomic_write_bytes, atomic_write_text, atomic_save_torch
from common.objective import Batch, Objective
from common.params import count_params
from common.seed import seed_everything

__all__ = [
    "Batch",
    "Objective",
    "count_params",
    "PelaBenchError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save_torch",
    "seed_everything",
]
