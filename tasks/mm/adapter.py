"""One adapter that lets mmseg and mmdet use any project backbone, uncompressed or compressed."""

from __future__ import annotations

import torch
from mmdet.registry import MODELS as DET_MODELS
from mmengine.model import BaseModule
from mmseg.registry import MODELS as SEG_MODELS

from backbones.base import Backbone
from common.errors import PelaBenchError


@SEG_MODELS.register_module()
@DET_MODELS.register_module()
class PelaBackbone(BaseModule):
    """A project `Backbone` as an mm* backbone: `forward(x)` returns `forward_pyramid(x)`.

    Built from a config whose ``backbone`` entry is the live module (the student a
    method produced, with whatever layers it swapped in), so nothing is rebuilt
    from a name and nothing a method changed is lost. The classifier is dropped:
    segmentors and detectors are counted without it, as in the paper's Tables 2 and 3.
    """

    def __init__(self, backbone: Backbone, init_cfg: dict | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(backbone, Backbone):
            raise PelaBenchError(f"PelaBackbone needs a project Backbone, got {type(backbone).__name__}")
        if backbone.info.num_classes:
            backbone.reset_classifier(0)
        self.body = backbone.attach_pyramid()
        self.out_channels = tuple(backbone.pyramid_channels)
        self.strides = tuple(backbone.pyramid_strides)

    def init_weights(self) -> None:
        # The backbone arrives trained (or deliberately random); mm's initialiser must not touch it.
        pass

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.body.forward_pyramid(x))

