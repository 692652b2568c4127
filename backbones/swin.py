"""Swin Transformers: Swin-Base (timm) and a CPU-sized Swin for the synthetic world."""

from __future__ import annotations

import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from backbones.base import Backbone, BackboneInfo
from backbones.neck import StageNorms
from backbones.registry import register_backbone
from common.errors import PelaBenchError

# The paper's Swin preset also keeps the patch-merging reductions and the attention
# output projections full-rank; with ratio 1.5 that gives Table 1's 62.2 M.
_SWIN_OMIT = ("head*", "patch_embed*", "norm", "downsample*", "attn.proj")


class SwinBackbone(Backbone):
    def blocks(self) -> list[nn.Module]:
        return [blk for stage in self.model.layers for blk in stage.blocks]

    def stages(self) -> list[nn.Module]:
        return list(self.model.layers)

    def attention_modules(self) -> list[nn.Module]:
        return [blk.attn for blk in self.blocks()]

    def forward_masked(self, image: torch.Tensor, visible: torch.Tensor, mask_token: torch.Tensor
                       ) -> list[torch.Tensor]:
        """Every block's output with the hidden patches replaced by `mask_token` (SimMIM's way).

        `visible`: (B, H, W) booleans on the patch grid. Shifted windows need the full
        grid, so a Swin cannot simply drop tokens as a ViT does.
        """
        x = self.model.patch_embed(image)  # (B, H, W, C)
        x = torch.where(visible[..., None], x, mask_token.to(x.dtype).expand_as(x))
        outputs = []
        for stage in self.model.layers:
            x = stage.downsample(x)
            for blk in stage.blocks:
                x = blk(x)
                outputs.append(x)
        return outputs

    @property
    def pyramid_strides(self) -> tuple[int, ...]:
        p = int(self.model.patch_embed.patch_size[0])
        return tuple(p * 2**i for i in range(len(self.model.layers)))

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        return self.info.embed_dims

    def _pyramid_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)

    def _make_pyramid_neck(self) -> nn.Module:
        return StageNorms(self.info.embed_dims)

    def _accept_any_input_size(self) -> None:
        # As the dense Swin configs do: windows keep their trained size at every input
        # size (padded where the map is smaller or not a multiple), the shifted
        # windows stay on, and attention masks are built for each input's shape.
        m = self.model
        m.patch_embed.strict_img_size = False
        m.dynamic_img_size = True
        for stage in m.layers:
            for blk in stage.blocks:
                blk.always_partition = True
                blk.dynamic_mask = True
                # attn.window_size is the trained window (its position-bias table's size)
                blk.window_size, blk.shift_size = blk._calc_window_shift(blk.attn.window_size, blk.target_shift_size)
                blk.window_area = blk.window_size[0] * blk.window_size[1]
                blk.attn_mask = None


def swin_info(name: str, model: SwinTransformer, hub_name: str | None, paper_ratio: float) -> BackboneInfo:
    """Metadata read off a timm Swin."""
    return BackboneInfo(
        name=name,
        family="swin",
        embed_dims=tuple(int(stage.blocks[0].norm1.normalized_shape[0]) for stage in model.layers),
        depth=sum(len(stage.blocks) for stage in model.layers),
        img_size=int(model.patch_embed.img_size[0]),
        num_classes=int(model.num_classes),
        paper_ratio=paper_ratio,
        lowrank_omit=_SWIN_OMIT,
        hub_name=hub_name,
        adapter_targets=("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
        classifier=("head",),
        halvable_stages=True,
        attention_scores=True,
        token_merging=False,  # windowed attention has no global token set (the paper leaves Swin out too)
        masking="mask_token",
        # The official Swin script (Swin/scripts/train_swin_b.sh, Swin/main.py:74-75): one MSE on the final
        # pooled feature, the perturbation at weight 1 with radius 0.
        pela_official=(("alpha", 1.0), ("beta", 1.0), ("epsilon", 0.0), ("rwp_form", "squared"),
                       ("rwp_reduce", "mean"), ("fd_targets", "pooled")),
    )


@register_backbone
def swin_base(pretrained: bool = False, **overrides) -> SwinBackbone:
    """Swin-Base (patch 4, window 7) at 224 px: 87.8 M params; paper preset ratio 1.5 -> 62.2 M."""
    hub_name = "swin_base_patch4_window7_224"
    model = timm.create_model(hub_name, pretrained=pretrained, **overrides)
    return SwinBackbone(model, swin_info("swin_base", model, hub_name, 1.5))


@register_backbone
def swin_micro(pretrained: bool = False, **overrides) -> SwinBackbone:
    """A Swin for 64 px synthetic scenes: patch 2, window 4, widths 32-256, depths 1-1-2-1."""
    if pretrained:
        raise PelaBenchError("swin_micro has no hub weights; train it (the suite's teacher stage does)")
    kwargs = dict(
        img_size=64, patch_size=2, window_size=4, embed_dim=32, depths=(1, 1, 2, 1),
        num_heads=(1, 2, 4, 8), mlp_ratio=4.0, num_classes=16,
    )
    kwargs.update(overrides)
    model = SwinTransformer(**kwargs)
    return SwinBackbone(model, swin_info("swin_micro", model, None, 1.5))
