"""Compression methods, one file each, one contract (`methods.base.Method`).

`lowrank.py` holds the project's only low-rank layer; every factorising method uses it.
"""

from methods.base import (Method, MethodOptions, create_method, list_methods, method_class, pinned_options,
                          register_method)
from methods.lowrank import LowRankLinear, factorize, lowrank_modules, lowrank_rank

# Import the method files so they register themselves.
from methods import dense, lora, maskalign, pc_lora, pela, svd, tinybert, tome  # noqa: E402,F401

__all__ = [
    "Method",
    "MethodOptions",
    "LowRankLinear",
    "create_method",
    "factorize",
    "list_methods",
    "lowrank_modules",
    "lowrank_rank",
    "method_class",
    "pinned_options",
    "register_method",
]
