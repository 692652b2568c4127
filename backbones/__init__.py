"""Backbone registry: ``create_backbone(name, weights=None|"hub"|path, **overrides)``.

Families live one per file (`vit.py`, `swin.py`, `albef.py`) and register their presets with
`@register_backbone`, as timm does with ``register_model``; ``timm:<model>`` builds
any timm ViT-style or Swin model with metadata read from the model (`timm_any.py`).
"""

from __future__ import annotations

from pathlib import Path

from backbones.base import Backbone, BackboneInfo
from backbones.registry import get_constructor, list_backbones, register_backbone
from backbones.timm_any import create_timm_backbone, is_timm_name
from backbones.weights import load_into, read_state_dict

# Import the families so their presets register themselves.
from backbones import albef, clip, swin, vit  # noqa: E402,F401


def create_backbone(name: str, weights: str | Path | None = None, **overrides) -> Backbone:
    """Build a registered backbone.

    weights: None for random init, ``"hub"`` for timm's pretrained weights (needs
    network access), or a path to a safetensors / ``torch.save`` state dict.
    overrides: constructor keyword arguments (``num_classes``, ``img_size``, ...).
    """
    pretrained = weights == "hub"
    if is_timm_name(name):
        backbone = create_timm_backbone(name, pretrained=pretrained, **overrides)
    else:
        backbone = get_constructor(name)(pretrained=pretrained, **overrides)
    if weights is not None and not pretrained:
        load_into(backbone, weights)
    return backbone


__all__ = [
    "Backbone",
    "BackboneInfo",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "load_into",
    "read_state_dict",
]
