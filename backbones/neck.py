"""Necks that turn a backbone's block outputs into a 4-level feature pyramid.

They exist only once a backbone is made dense-ready (`Backbone.attach_pyramid`),
are trained with the dense head, and count towards its parameters, as in the
paper's Tables 2 and 3 (backbone + neck + head).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiLevelNeck(nn.Module):
    """Plain-ViT pyramid, as mmseg's ViT + UperNet configs build it.

    Each of the four same-stride maps gets a 1x1 lateral conv, is resized by its
    scale (4, 2, 1, 0.5: strides 16 -> 4, 8, 16, 32 for a patch-16 ViT) and
    smoothed by a 3x3 conv. Bilinear up-sampling and average-pool down-sampling
    keep it free of learned deconvolutions, so its size depends only on the width.
    """

    def __init__(self, in_channels: int, out_channels: int, scales: tuple[float, ...] = (4, 2, 1, 0.5)) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in self.scales)
        self.smooth = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in self.scales)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.scales):
            raise ValueError(f"MultiLevelNeck expects {len(self.scales)} maps, got {len(feats)}")
        outs = []
        for x, lateral, smooth, scale in zip(feats, self.lateral, self.smooth, self.scales):
            x = lateral(x)
            if scale > 1:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            elif scale < 1:
                k = round(1 / scale)
                x = F.avg_pool2d(x, kernel_size=k, stride=k, ceil_mode=True)
            outs.append(smooth(x))
        return outs


class StageNorms(nn.Module):
    """One LayerNorm per hierarchical stage output (over channels), as dense Swin configs add."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous() for x, norm in zip(feats, self.norms)]
