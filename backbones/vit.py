"""Plain ViTs: DeiT-Base, DeiT-III-Large (timm) and a CPU-sized DeiT for the synthetic world."""

from __future__ import annotations

import timm
import torch
from timm.layers import Format
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from backbones.base import Backbone, BackboneInfo
from backbones.neck import MultiLevelNeck
from backbones.registry import register_backbone
from common.errors import PelaBenchError

# The paper keeps the classifier, the patch embedding and the norms full-rank.
_VIT_OMIT = ("head", "patch_embed*", "norm")
# The four linear maps of every block that adapter methods (LoRA) attach to.
_ADAPTER_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


# Dense heads read blocks 4, 6, 8 and 12 of 12 (mmseg's DeiT + UperNet): the same
# fractions of depth for deeper or depth-halved students.
_PYRAMID_FRACTIONS = (4 / 12, 6 / 12, 8 / 12, 12 / 12)


def pyramid_block_indices(depth: int) -> tuple[int, ...]:
    """0-based blocks feeding the pyramid: (3, 5, 7, 11) for 12 blocks, (7, 11, 15, 23) for 24."""
    return tuple(max(1, round(depth * f)) - 1 for f in _PYRAMID_FRACTIONS)


class ViTBackbone(Backbone):
    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def stages(self) -> list[nn.Module]:
        return [self.model]  # one stage: the network's own `blocks`

    def attention_modules(self) -> list[nn.Module]:
        return [blk.attn for blk in self.model.blocks]

    def token_encoder(self) -> nn.Module:
        return self.model

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    def forward_visible(self, image: torch.Tensor, keep_idx: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output when only the prefix tokens and the patches `keep_idx` (B, K) enter."""
        return forward_visible(self.model, image, keep_idx)

    @property
    def _patch(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def pyramid_strides(self) -> tuple[int, ...]:
        p = self._patch  # the neck's scales 4, 2, 1, 1/2
        return (max(1, p // 4), max(1, p // 2), p, 2 * p)

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        return (self.model.embed_dim,) * 4

    def _pyramid_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = pyramid_block_indices(len(self.model.blocks))
        unique = sorted(set(wanted))  # a shallow student may feed two levels from one block
        maps = self.model.forward_intermediates(x, indices=unique, output_fmt="NCHW", intermediates_only=True)
        by_block = dict(zip(unique, maps))
        return [by_block[i] for i in wanted]

    def _make_pyramid_neck(self) -> nn.Module:
        dim = self.model.embed_dim
        return MultiLevelNeck(dim, dim)

    def _accept_any_input_size(self) -> None:
        # timm's dynamic-size mode, switched on after construction: the position
        # embedding is resampled to each input's patch grid, and inputs that are not
        # a multiple of the patch are padded.
        m = self.model
        m.dynamic_img_size = True
        pe = m.patch_embed
        pe.strict_img_size = False
        pe.dynamic_img_pad = True
        pe.flatten = False
        pe.output_fmt = Format.NHWC


def _has_fused_qkv(model: nn.Module) -> bool:
    attn = getattr(model.blocks[0], "attn", None) if len(model.blocks) else None
    return all(hasattr(attn, a) for a in ("qkv", "num_heads", "scale")) and isinstance(attn.qkv, nn.Linear)


def vit_info(name: str, model: nn.Module, hub_name: str | None, paper_ratio: float) -> BackboneInfo:
    """Metadata read off a timm ViT-style model (VisionTransformer, or Eva-like with `blocks`)."""
    plain = type(model) is VisionTransformer
    return BackboneInfo(
        name=name,
        family="vit",
        embed_dims=(int(model.embed_dim),),
        depth=len(model.blocks),
        img_size=int(model.patch_embed.img_size[0]),
        num_classes=int(model.num_classes),
        paper_ratio=paper_ratio,
        lowrank_omit=_VIT_OMIT,
        hub_name=hub_name,
        adapter_targets=_ADAPTER_TARGETS,
        classifier=("head",),
        halvable_stages=True,
        # Eva-style blocks rotate q and k after the qkv projection, so its output is not the scores' input.
        attention_scores=plain and _has_fused_qkv(model),
        # ToMe rewrites timm's standard ViT blocks; other ViT-like classes keep their own forward.
        token_merging=plain,
        # Attentive masking reads the class token's attention: no class token, no "drop" masking.
        masking="drop" if plain and getattr(model, "cls_token", None) is not None else None,
    )


def _from_timm(name: str, hub_name: str, paper_ratio: float, pretrained: bool, **overrides) -> ViTBackbone:
    model = timm.create_model(hub_name, pretrained=pretrained, **overrides)
    return ViTBackbone(model, vit_info(name, model, hub_name, paper_ratio))


@register_backbone
def deit_base(pretrained: bool = False, **overrides) -> ViTBackbone:
    """DeiT-Base/16 at 224 px: 86.6 M params; paper preset ratio 2 -> 44.1 M (Table 1)."""
    return _from_timm("deit_base", "deit_base_patch16_224", 2.0, pretrained, **overrides)


@register_backbone
def deit3_large(pretrained: bool = False, **overrides) -> ViTBackbone:
    """DeiT-III-Large/16 at 224 px: 304.4 M params; paper preset ratio 2 -> 153.2 M (Table 1)."""
    return _from_timm("deit3_large", "deit3_large_patch16_224", 2.0, pretrained, **overrides)


@register_backbone
def deit_micro(pretrained: bool = False, **overrides) -> ViTBackbone:
    """A DeiT-shaped ViT for 64 px synthetic scenes that trains in minutes on 2 CPU cores.

    8 px patches (64 tokens + class token), width 48, 6 blocks, 3 heads, about 0.18 M params.
    Narrow on purpose: at width 128 the briefly trained teacher is so redundant that
    ratio-2 SVD costs it under 3 points and the methods cannot be told apart. Its preset
    ratio is 3, not DeiT-B's 2, so that plain SVD costs it what it costs DeiT-B in the
    paper (a quarter of the accuracy: 93.6 -> 71.9 here, 81.8 -> 61.1 in Table 7; ratio 2
    costs it 7 points). Average pooling and the original ViT's (jax) init learn faster
    from scratch than the class token and timm's default.
    """
    if pretrained:
        raise PelaBenchError("deit_micro has no hub weights; train it (the suite's teacher stage does)")
    kwargs = dict(img_size=64, patch_size=8, embed_dim=48, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=16,
                  global_pool="avg", weight_init="jax")
    kwargs.update(overrides)
    model = VisionTransformer(**kwargs)
    return ViTBackbone(model, vit_info("deit_micro", model, None, 3.0))


def forward_visible(vit: nn.Module, image: torch.Tensor, keep_idx: torch.Tensor) -> list[torch.Tensor]:
    """A timm ViT's block outputs when only its prefix tokens and the patches `keep_idx` (B, K) enter."""
    x = vit._pos_embed(vit.patch_embed(image))
    prefix = vit.num_prefix_tokens
    patches = x[:, prefix:].gather(1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
    x = vit.norm_pre(torch.cat([x[:, :prefix], patches], dim=1))
    outputs = []
    for blk in vit.blocks:
        x = blk(x)
        outputs.append(x)
    return outputs
