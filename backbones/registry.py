"""Name -> constructor registry for backbones, in the style of timm's ``register_model``."""

from __future__ import annotations

from typing import Callable

from common.errors import PelaBenchError

_BACKBONES: dict[str, Callable[..., "object"]] = {}


def register_backbone(fn: Callable) -> Callable:
    """Register a backbone constructor under its function name."""
    name = fn.__name__
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is registered twice")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def get_constructor(name: str) -> Callable:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise PelaBenchError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}, "
            "or timm:<model> for any timm ViT or Swin"
        ) from None
