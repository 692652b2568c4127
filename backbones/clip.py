"""CLIP through open_clip: a dual encoder (image and text towers, contrastive objective).

Beyond the paper: PELA's authors compress ALBEF; CLIP is the vision-language model
most people deploy today. The network is open_clip's own (`open_clip.model.CLIP`,
built offline from its model configs, or with ``weights="hub"`` from its
pretrained tags when the machine has network), with one change: open_clip's
attention is `nn.MultiheadAttention`, whose input projection is one bare
``in_proj_weight`` parameter, not an `nn.Linear`, so "factorise every linear layer"
would miss a third of the weights. Every `nn.MultiheadAttention` is replaced by
`LinearMultiheadAttention`, which computes the same function from four
`nn.Linear` maps (a test checks it equals the original); then the low-rank core,
LoRA and the rest see every projection.

The text tower reads the data's own tokens: the text is pooled at its last real
token (open_clip pools at the end-of-text token, which is where its tokenizer puts
it), so the synthetic world's word-level vocabulary works as well as open_clip's
BPE. Distillation targets: every block's output of each tower (``image``, ``text``).

The depth-halved TinyBERT and MaskAlign students thin both towers (`thin`); their
attention losses and MaskAlign's attentive masking read the image tower's
pre-softmax scores (`attention_scores`); ToMe merges the image tower's tokens
(`token_encoder`), which CLIP pools at its class token, never merged.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from backbones.albef import OFFICIAL_ALBEF_PELA
from backbones.base import Backbone, BackboneInfo
from backbones.registry import register_backbone
from common.errors import PelaBenchError

HUB_TAG = "laion2b_s34b_b88k"  # open_clip's ViT-B-16 weights used for weights="hub" (no QuickGELU)


class LinearMultiheadAttention(nn.Module):
    """`nn.MultiheadAttention` (batch first, no bias_kv / zero_attn) from separate q, k, v and output maps."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise PelaBenchError(f"attention width {dim} is not a multiple of {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "LinearMultiheadAttention":
        if not mha.batch_first or mha.bias_k is not None or mha.add_zero_attn or not mha._qkv_same_embed_dim:
            raise PelaBenchError("only batch-first self-attention without bias_kv/zero_attn can be converted")
        dim = mha.embed_dim
        new = cls(dim, mha.num_heads, mha.dropout).to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        if mha.in_proj_weight.device.type != "meta":
            with torch.no_grad():
                for i, lin in enumerate((new.q, new.k, new.v)):
                    lin.weight.copy_(mha.in_proj_weight[i * dim:(i + 1) * dim])
                    lin.bias.copy_(mha.in_proj_bias[i * dim:(i + 1) * dim])
                new.out_proj.load_state_dict(mha.out_proj.state_dict())
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, **_: Any) -> tuple[torch.Tensor, None]:
        """As `nn.MultiheadAttention.forward`; masks follow its conventions (boolean True = not attended,
        or additive floats). Attention weights are never returned (open_clip never asks for them)."""
        key = query if key is None else key
        value = key if value is None else value
        b, n, _ = query.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, x.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(value))
        bias = None
        neg = torch.finfo(q.dtype).min
        if attn_mask is not None:
            bias = (torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(attn_mask, neg)
                    if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype))
            bias = bias.view(1, 1, *bias.shape[-2:]) if bias.dim() == 2 else bias.view(b, self.heads, *bias.shape[-2:])
        if key_padding_mask is not None:
            pad = torch.zeros(key_padding_mask.shape, dtype=q.dtype, device=q.device).masked_fill(
                key_padding_mask.bool(), neg)[:, None, None, :]
            bias = pad if bias is None else (bias + pad).clamp_min(neg)
        return self.attend(q, k, v, bias), None

    @property
    def scale(self) -> float:
        """The logits' scale, head_dim ** -0.5 (as `nn.MultiheadAttention`)."""
        return (self.q.out_features // self.heads) ** -0.5

    def heads_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's queries, keys and values, (B, heads, N, head_dim) each."""
        b, n, _ = x.shape
        return tuple(lin(x).view(b, n, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """The output map of attention over (B, heads, N, head_dim) queries, keys and values; `bias` is added
        to the logits (broadcast to (B, heads, N, N): masks, or ToMe's token sizes)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).flatten(2))


def linearize_attention(model: nn.Module) -> nn.Module:
    """Replace every `nn.MultiheadAttention` of `model` by an equal `LinearMultiheadAttention`, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LinearMultiheadAttention.from_mha(module))
    return model


_ADAPTER_TARGETS = ("attn.q", "attn.k", "attn.v", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")


class ClipBackbone(Backbone):
    """open_clip's CLIP with linear attention: `encode_image`, `encode_text`, ITC objective."""

    def __init__(self, model: nn.Module, info: BackboneInfo) -> None:
        super().__init__(linearize_attention(model), info)
        if getattr(model.visual, "attn_pool", None) is not None:
            raise PelaBenchError(f"{info.name}: open_clip models with attentional pooling are not supported")

    # -- encoders ----------------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """The pooled, projected image embedding (B, embed_dim), not normalised."""
        return self.model.visual(image)

    def image_feat(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled, dim=-1)

    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Per-token states (B, L, width) after the final norm; causal, so padding after the text changes nothing."""
        m = self.model
        length = text_ids.shape[1]
        if length > m.positional_embedding.shape[0]:
            raise PelaBenchError(f"text of {length} tokens exceeds {self.info.name}'s "
                                 f"{m.positional_embedding.shape[0]} positions")
        x = m.token_embedding(text_ids) + m.positional_embedding[:length]
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        return m.ln_final(x)

    def text_feat(self, states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Pooled at the last real token (open_clip's end-of-text position), projected and normalised."""
        last = text_mask.sum(1).clamp_min(1) - 1
        pooled = states[torch.arange(states.shape[0], device=states.device), last]
        proj = self.model.text_projection
        return F.normalize(proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj, dim=-1)

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarity (B,) of matched image-text pairs: the cost of scoring one pair."""
        image_feat = self.image_feat(self.encode_image(image))
        text_feat = self.text_feat(self.encode_text(text_ids, text_mask), text_mask)
        return self.model.logit_scale.exp() * (image_feat * text_feat).sum(-1)

    # -- objective ------------------------------------------------------------------------------------
    def objective_terms(self, kind: str, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """CLIP's symmetric contrastive loss ("vlp" in pre-training, "itc" when fine-tuning for retrieval).

        Pairs that share an ``image_id`` (captions of one image) are positives of each other."""
        if kind not in ("vlp", "itc"):
            raise PelaBenchError(f"CLIP has no objective {kind!r}; it has 'vlp' and 'itc'")
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        image_feat = self.image_feat(self.encode_image(batch["image"]))
        text_feat = self.text_feat(self.encode_text(batch["text_ids"], batch["text_mask"]), batch["text_mask"])
        logits = self.model.logit_scale.exp() * image_feat @ text_feat.T
        idx = batch.get("image_id")
        if idx is None:
            targets = torch.eye(logits.shape[0], device=logits.device)
        else:
            pos = (idx[:, None] == idx[None]).float()
            targets = pos / pos.sum(1, keepdim=True)
        loss_i2t = -(F.log_softmax(logits, dim=1) * targets).sum(1).mean()
        loss_t2i = -(F.log_softmax(logits.T, dim=1) * targets).sum(1).mean()
        return {"itc": (loss_i2t + loss_t2i) / 2}

    # -- the backbone contract ---------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        return list(self.model.visual.transformer.resblocks)

    def _towers(self) -> dict[str, nn.Module]:
        """The feature groups' block stacks (open_clip `Transformer`s holding `resblocks`)."""
        return {"image": self.model.visual.transformer, "text": self.model.transformer}

    def block_stages(self) -> list[int]:
        return [0] * len(self.blocks())  # the image tower is one stage, as a plain ViT's

    def thin(self, select: Callable[[list[int]], list[list[int]]]) -> tuple[dict[str, list[int]], list[int]]:
        """Both towers thinned by `select`, each on its own, in place. Every feature group holds one state
        per block (no embedding state), so a group's map is the kept blocks' indices."""
        maps: dict[str, list[int]] = {}
        for group, tower in self._towers().items():
            (keep,) = select([len(tower.resblocks)])
            tower.resblocks = nn.ModuleList(tower.resblocks[i] for i in keep)
            tower.layers = len(keep)  # open_clip's own record of the depth
            maps[group] = list(keep)
        self.info = replace(self.info, depth=len(maps["image"]))
        return maps, maps["image"]

    def attention_modules(self) -> list[nn.Module]:
        """The image tower's attention (`LinearMultiheadAttention`): what TinyBERT and MaskAlign read."""
        return [blk.attn for blk in self.blocks()]

    @contextmanager
    def attention_scores(self) -> Iterator[list[torch.Tensor]]:
        """Every image block's pre-softmax scores (B, heads, N, N): the query map's output, kept until the
        key map's, which always follows it (`LinearMultiheadAttention` projects q, k, v in that order)."""
        scores: list[torch.Tensor] = []

        def hooks(attn: LinearMultiheadAttention) -> list[torch.utils.hooks.RemovableHandle]:
            pending: list[torch.Tensor] = []

            def split(x: torch.Tensor) -> torch.Tensor:
                return x.view(*x.shape[:2], attn.heads, -1).transpose(1, 2)

            def keep_queries(_m: nn.Module, _i: Any, q: torch.Tensor) -> None:
                pending.append(split(q))

            def score(_m: nn.Module, _i: Any, k: torch.Tensor) -> None:
                scores.append((pending.pop() * attn.scale) @ split(k).transpose(-2, -1))

            return [attn.q.register_forward_hook(keep_queries), attn.k.register_forward_hook(score)]

        handles = [h for attn in self.attention_modules() for h in hooks(attn)]
        try:
            yield scores
        finally:
            for h in handles:
                h.remove()

    def token_encoder(self) -> nn.Module:
        """The image tower, open_clip's `VisionTransformer` (ToMe merges its tokens; pooling reads the class token)."""
        return self.model.visual

    @property
    def num_prefix_tokens(self) -> int:
        return 1  # open_clip's ViT puts its class token first

    def image_block_states(self, image: torch.Tensor) -> list[torch.Tensor]:
        with self.capture_features() as groups:
            self.encode_image(image)
        return groups["image"]

    def forward_visible(self, image: torch.Tensor, keep_idx: torch.Tensor) -> list[torch.Tensor]:
        """The image tower's block outputs when only the class token and the patches `keep_idx` (B, K) enter."""
        visual = self.model.visual
        x = visual._embeds(image)  # per-token ops only (ln_pre), so gathering after them is the same
        patches = x[:, 1:].gather(1, keep_idx[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1)
        outputs = []
        for blk in visual.transformer.resblocks:
            x = blk(x)
            outputs.append(x)
        return outputs

    @contextmanager
    def capture_features(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        groups: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        handles = [blk.register_forward_hook(lambda _m, _i, out, g=g: groups[g].append(out))
                   for g, tower in self._towers().items() for blk in tower.resblocks]
        try:
            yield groups
        finally:
            for h in handles:
                h.remove()

    def features(self, batch: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        with self.capture_features() as groups:
            self.encode_image(batch["image"])
            self.encode_text(batch["text_ids"], batch["text_mask"])
        return groups

    def reset_classifier(self, num_classes: int) -> None:
        raise PelaBenchError(f"{self.info.name} has no classifier to reset")

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept an open_clip checkpoint (``visual.…``, attention as ``in_proj_weight``) as well as our own."""
        if any(k.startswith("model.") for k in state):
            return dict(state)
        out: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            prefix, _, name = key.rpartition(".")
            if name in ("in_proj_weight", "in_proj_bias"):  # one (3 d, ...) tensor -> the q, k and v maps
                for part, chunk in zip(("q", "k", "v"), value.chunk(3)):
                    out[f"model.{prefix}.{part}.{'weight' if name.endswith('weight') else 'bias'}"] = chunk
            else:
                out[f"model.{key}"] = value
        return out

    def text_vocab_size(self) -> int:
        return self.model.token_embedding.num_embeddings

    def drop_mlm_head(self) -> "ClipBackbone":
        """The retrieval model is the model itself: CLIP has no masked-language head to drop."""
        return self


def clip_info(name: str, img_size: int, width: int, depth: int, tokenizer: str) -> BackboneInfo:
    # Ratio 3 and ALBEF's PELA settings: the paper's (and the official code's) vision-language preset;
    # the official code has no CLIP script, so its ALBEF one stands in.
    return BackboneInfo(
        name=name, family="clip", embed_dims=(width,), depth=depth, img_size=img_size, num_classes=0,
        paper_ratio=3.0, lowrank_omit=(), lowrank_min_out=10, hub_name=f"open_clip:ViT-B-16/{HUB_TAG}",
        pretrain_task="vlp", adapter_targets=_ADAPTER_TARGETS, classifier=(), feature_groups=("image", "text"),
        halvable_stages=True, attention_scores=True, token_merging=True, masking="drop", tokenizer=tokenizer,
        pela_official=OFFICIAL_ALBEF_PELA,
    )


def _build(name: str, config: dict[str, Any], pretrained: bool, overrides: dict[str, Any], tokenizer: str,
           hub: tuple[str, str] | None = None) -> ClipBackbone:
    import open_clip
    from open_clip.model import CLIP

    vision, text = dict(config["vision_cfg"]), dict(config["text_cfg"])
    if "img_size" in overrides:
        vision["image_size"] = overrides.pop("img_size")
    if "vocab_size" in overrides:
        text["vocab_size"] = overrides.pop("vocab_size")
    if "context_length" in overrides:
        text["context_length"] = overrides.pop("context_length")
    if overrides:
        raise PelaBenchError(f"{name} has no setting(s) {', '.join(sorted(overrides))} "
                             "(it takes img_size, vocab_size, context_length)")
    if pretrained:
        if hub is None:
            raise PelaBenchError(f"{name} has no hub weights; train it or pass weights=PATH")
        if text["vocab_size"] != 49408:
            raise PelaBenchError(f"{name}'s hub weights use open_clip's 49,408-token BPE vocabulary; "
                                 f"the data's has {text['vocab_size']}")
        model = open_clip.create_model(hub[0], pretrained=hub[1], force_image_size=vision["image_size"])
    else:
        model = CLIP(embed_dim=config["embed_dim"], vision_cfg=vision, text_cfg=text)
    return ClipBackbone(model, clip_info(name, vision["image_size"], vision["width"], vision["layers"], tokenizer))


@register_backbone
def clip_b16(pretrained: bool = False, **overrides: Any) -> ClipBackbone:
    """open_clip's ViT-B-16 CLIP (149.6 M parameters at random init), reading text with open_clip's BPE;
    ``weights="hub"`` loads its ``laion2b_s34b_b88k`` weights (needs network)."""
    import open_clip

    return _build("clip_b16", open_clip.get_model_config("ViT-B-16"), pretrained, overrides, "clip_bpe",
                  hub=("ViT-B-16", HUB_TAG))


@register_backbone
def clip_tiny(pretrained: bool = False, **overrides: Any) -> ClipBackbone:
    """A CPU-sized CLIP for the synthetic captions: 64 px, 8 px patches, width 64, 4 + 4 layers, reading
    the data's own word-level vocabulary (as `albef_tiny`)."""
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 4, "head_width": 32},
              "text_cfg": {"context_length": 40, "vocab_size": 128, "width": 64, "heads": 2, "layers": 4}}
    return _build("clip_tiny", config, pretrained, overrides, "vocab")
