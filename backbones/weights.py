"""Loading local checkpoints into a backbone, with errors that name the file and the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from common.errors import PelaBenchError

_WRAPPER_PREFIX = "model."
_MAX_LISTED = 6


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a `torch.save`d state dict (never unpickling arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise PelaBenchError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or pickled with forbidden classes
        raise PelaBenchError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    # Common wrappers: {"state_dict": ...} (Lightning, mmengine) and {"model": ...} (timm, DeiT).
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PelaBenchError(f"checkpoint {path} does not hold a state dict of tensors")
    return dict(state)


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_into(module: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load `path` into `module` (a `Backbone` or its wrapped network).

    Checkpoints saved from a `Backbone` carry the ``model.`` prefix; plain timm
    checkpoints do not. Both are accepted. Shape mismatches are always an error,
    missing or unexpected keys are an error when `strict`.
    """
    state = read_state_dict(path)
    adapt = getattr(module, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    target = module
    has_wrapper = hasattr(module, "model") and isinstance(getattr(module, "model"), nn.Module)
    if has_wrapper and not any(k.startswith(_WRAPPER_PREFIX) for k in state):
        target = module.model
    own = target.state_dict()
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if shape_errors:
        raise PelaBenchError(
            f"checkpoint {path} does not fit this model ({len(shape_errors)} tensors of the wrong shape): "
            + _listed(shape_errors)
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if not set(state) & set(own):
        raise PelaBenchError(f"checkpoint {path} shares no parameter names with this model")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        raise PelaBenchError(f"checkpoint {path} does not match this model; " + "; ".join(parts))
    target.load_state_dict(state, strict=False)
