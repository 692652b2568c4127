"""ToMe: token merging by bipartite soft matching, applied at inference with no training.

After each block's attention, the tokens are split alternately into two sets A
and B; every A token is linked to its most similar B token (cosine similarity of
the attention keys, averaged over heads), and the r most similar links are merged
by a size-weighted average. The class token is never merged. Each token carries
its size (how many patches it stands for); attention adds log(size) to the keys'
logits (proportional attention) so a merged token weighs as much as the patches
it replaced. r may be one number for every block or one number per block.

Written for current timm ViT blocks (LayerScale of DeiT-III and the fused
attention kernel kept) and for open_clip's (CLIP's image tower, its attention
built from `nn.Linear` maps by `backbones.clip`); with r=0 either computes
exactly what the unmerged model does. Swin's windowed attention has no such
token set, so ToMe refuses Swin, as the paper does. `ToMeState.unmerge` maps merged tokens back to
the patch grid for dense heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from open_clip.transformer import VisionTransformer as OpenClipVisionTransformer
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn

from backbones.clip import LinearMultiheadAttention
from common.errors import PelaBenchError
from methods.base import Method, MethodOptions, frozen_copy, refuse_ratio, register_method


@dataclass
class TokenMerge:
    """One merge step: which A tokens stay, which merge into which B token."""

    keep_idx: torch.Tensor  # (B, n_keep) positions in A of the unmerged A tokens, ascending
    src_idx: torch.Tensor  # (B, r) positions in A of the merged A tokens
    dst_idx: torch.Tensor  # (B, r) positions in B they merge into

    def apply(self, x: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        c = x.shape[-1]
        kept = a.gather(1, self.keep_idx[..., None].expand(-1, -1, c))
        moved = a.gather(1, self.src_idx[..., None].expand(-1, -1, c))
        b = b.scatter_reduce(1, self.dst_idx[..., None].expand(-1, -1, c), moved, reduce=reduce)
        return torch.cat([kept, b], dim=1)

    def token_map(self, n: int) -> torch.Tensor:
        """(B, n): the index each of the n input tokens has after the merge."""
        bsz, n_keep = self.keep_idx.shape
        n_a, n_b = (n + 1) // 2, n // 2
        device = self.keep_idx.device
        new_a = torch.empty(bsz, n_a, dtype=torch.long, device=device)
        new_a.scatter_(1, self.keep_idx, torch.arange(n_keep, device=device).expand(bsz, -1))
        new_a.scatter_(1, self.src_idx, n_keep + self.dst_idx)
        out = torch.empty(bsz, n, dtype=torch.long, device=device)
        out[:, ::2] = new_a
        out[:, 1::2] = n_keep + torch.arange(n_b, device=device)
        return out


def bipartite_soft_matching(metric: torch.Tensor, r: int, protect_first: bool = True) -> TokenMerge:
    """Pick the r most similar A->B links of `metric` (B, N, C); the first token never moves."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(1, 2)
    if protect_first:
        scores[:, 0, :] = -torch.inf
    best, best_dst = scores.max(dim=-1)  # each A token's closest B token
    order = best.argsort(dim=-1, descending=True)
    src_idx = order[:, :r]
    keep_idx = order[:, r:].sort(dim=-1).values  # keeps the class token first
    dst_idx = best_dst.gather(1, src_idx)
    return TokenMerge(keep_idx, src_idx, dst_idx)


@dataclass
class ToMeState:
    """What the merged blocks share during one forward pass."""

    r: list[int]
    proportional_attention: bool = True
    size: torch.Tensor | None = None  # (B, N, 1) patches per token; None until the first merge
    source: torch.Tensor | None = None  # (B, N_input) current index of every input token
    layer: int = 0
    tokens_per_layer: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.size = self.source = None
        self.layer = 0
        self.tokens_per_layer = []

    def attention_bias(self) -> torch.Tensor | None:
        if self.size is None or not self.proportional_attention:
            return None
        return self.size.log()[:, None, None, :, 0]  # (B, 1, 1, N), added to every query's logits

    def merge(self, x: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
        r = self.r[self.layer] if self.layer < len(self.r) else 0
        self.layer += 1
        n = x.shape[1]
        r = min(r, (n - 1) // 2)  # A holds (n + 1) // 2 tokens, one of them protected
        if r > 0:
            step = bipartite_soft_matching(metric, r)
            size = self.size if self.size is not None else torch.ones_like(x[..., :1])
            x = step.apply(x * size) / step.apply(size)
            self.size = step.apply(size)
            moved = step.token_map(n)
            self.source = moved if self.source is None else moved.gather(1, self.source)
        self.tokens_per_layer.append(x.shape[1])
        return x

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        """Merged tokens back at every input position (each input gets its merged token's value)."""
        if self.source is None:
            return x
        return x.gather(1, self.source[..., None].expand(-1, -1, x.shape[-1]))


class ToMeAttention(Attention):
    """timm's attention, also returning the keys averaged over heads (the merge metric)."""

    def forward_with_metric(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, n, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(bsz, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if attn_mask is not None:
                attn = attn + attn_mask
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(bsz, n, -1)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x)), k.mean(1)


class ToMeBlock(Block):
    tome: ToMeState

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("ToMe blocks take no attention mask")
        attn_out, metric = self.attn.forward_with_metric(self.norm1(x), self.tome.attention_bias())
        x = x + self.drop_path1(self.ls1(attn_out))
        x = self.tome.merge(x, metric)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ToMeVisionTransformer(VisionTransformer):
    tome: ToMeState

    def forward_features(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.tome.reset()
        return super().forward_features(x, *args, **kwargs)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        size = self.tome.size
        if pool_type == "avg" and size is not None and self.attn_pool is None:
            # A merged token stands for several patches: weigh it by its size.
            k = self.num_prefix_tokens
            return (x[:, k:] * size[:, k:]).sum(1) / size[:, k:].sum(1)
        return super().pool(x, pool_type)


# -- open_clip's ViT (CLIP's image tower, its attention made of nn.Linear maps by backbones.clip) ----------
class ToMeResidualAttentionBlock(ResidualAttentionBlock):
    tome: ToMeState

    def forward(self, q_x: torch.Tensor, k_x: torch.Tensor | None = None, v_x: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if k_x is not None or v_x is not None or attn_mask is not None:
            raise NotImplementedError("ToMe blocks take no attention mask and no cross-attention")
        q, k, v = self.attn.heads_qkv(self.ln_1(q_x))
        x = q_x + self.ls_1(self.attn.attend(q, k, v, self.tome.attention_bias()))
        x = self.tome.merge(x, k.mean(1))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class ToMeOpenClipVisionTransformer(OpenClipVisionTransformer):
    tome: ToMeState

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tome.reset()
        return super().forward(x)

    def _global_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.tome.size
        if self.pool_type == "avg" and size is not None:
            return (x[:, 1:] * size[:, 1:]).sum(1) / size[:, 1:].sum(1), x[:, 1:]  # as the timm ViT's
        return super()._global_pool(x)


def _merge_plan(model: nn.Module) -> tuple[list[nn.Module], type, type, int]:
    """The blocks to rewrite, the encoder's and the blocks' ToMe classes, and the encoder's token count."""
    if isinstance(model, VisionTransformer):
        for blk in model.blocks:
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise PelaBenchError(f"ToMe supports timm's standard ViT blocks, not {type(blk).__name__}")
        tokens = model.patch_embed.num_patches + model.num_prefix_tokens
        return list(model.blocks), ToMeVisionTransformer, ToMeBlock, tokens
    if isinstance(model, OpenClipVisionTransformer):
        if model.attn_pool is not None:
            raise PelaBenchError("ToMe does not support open_clip ViTs with attentional pooling")
        blocks = list(model.transformer.resblocks)
        for blk in blocks:
            if type(blk) is not ResidualAttentionBlock or not isinstance(blk.attn, LinearMultiheadAttention):
                raise PelaBenchError("ToMe supports open_clip's residual attention blocks with linear attention "
                                     f"(backbones.clip.linearize_attention), not {type(blk).__name__} "
                                     f"with {type(blk.attn).__name__}")
        return blocks, ToMeOpenClipVisionTransformer, ToMeResidualAttentionBlock, model.positional_embedding.shape[0]
    raise PelaBenchError(f"ToMe needs a plain ViT (timm's or open_clip's); got {type(model).__name__}")


def apply_tome(model: nn.Module, r: int | Sequence[int], proportional_attention: bool = True) -> ToMeState:
    """Turn a timm or open_clip ViT into its ToMe version in place; returns the shared state."""
    blocks, encoder_cls, block_cls, _ = _merge_plan(model)
    depth = len(blocks)
    per_layer = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
    if len(per_layer) != depth or any(v < 0 for v in per_layer):
        raise PelaBenchError(f"tome option r must be an int >= 0 or {depth} of them, got {r!r}")
    state = ToMeState(per_layer, proportional_attention)
    model.__class__ = encoder_cls
    model.tome = state
    for blk in blocks:
        blk.__class__ = block_cls
        if block_cls is ToMeBlock:
            blk.attn.__class__ = ToMeAttention
        blk.tome = state
    return state


# ToMe's ViT-B/16 setting: 16 of 197 tokens merged per block, which halves DeiT-B's FLOPs.
REFERENCE_R, REFERENCE_TOKENS = 16, 197


def default_r(model: nn.Module) -> int:
    """The reference r scaled to this model's token count (5 for the 65-token micro DeiT)."""
    tokens = _merge_plan(model)[3]
    return max(1, round(REFERENCE_R * tokens / REFERENCE_TOKENS))


@dataclass
class ToMeOptions(MethodOptions):
    r: int | list[int] | None = None  # tokens merged per block; None: `default_r`
    proportional_attention: bool = True

    def __post_init__(self) -> None:
        refuse_ratio(self, "tome", "it merges tokens, not weights; use --set r=N")


@register_method("tome")
class ToMe(Method):
    takes_ratio = False
    trains = False
    # ToMe's paper and this benchmark apply it to classification; a dense head would
    # need every merged token unmerged back onto the grid (`ToMeState.unmerge`), which
    # is not wired into the pyramid yet.
    lacks = {"pyramid": "token merging leaves no per-patch feature map for a dense head",
             "patch_grid": "token merging leaves no per-patch attention map to ground an expression in "
                           "(the paper leaves ToMe out of grounding too)"}
    options_cls = ToMeOptions

    @staticmethod
    def check_backbone(info) -> None:
        if not info.token_merging:
            raise PelaBenchError(
                f"tome does not apply to {info.name}: token merging needs a plain ViT's global attention "
                "(the paper leaves Swin out too)"
            )

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        self.check_backbone(teacher.info)
        student = frozen_copy(teacher)
        encoder = student.token_encoder()
        r = self.options.r if self.options.r is not None else default_r(encoder)
        apply_tome(encoder, r, self.options.proportional_attention)
        return student
