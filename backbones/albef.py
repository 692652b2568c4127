"""An ALBEF-style vision-language model (Li et al., NeurIPS 2021), the paper's fourth backbone.

No maintained ALBEF package installs beside timm 1.x, so the model is the
project's own, laid out as salesforce/ALBEF's configs describe it:

- image encoder: timm's ViT (ViT-B/16 for `albef_base`; 256 px in pre-training, 384 downstream);
- text encoder: a BERT-shaped post-LayerNorm transformer written from `nn.Linear`s, so it
  factorises like everything else. Layers ``[0, fusion_start)`` read the text alone;
  layers ``[fusion_start, depth)`` also cross-attend to the image tokens (Hugging Face's
  `BertLayer` would force causal self-attention once cross-attention is on);
- 256-d projections for the contrastive loss, a learnt temperature, momentum copies of
  both encoders and projections (EMA 0.995) feeding a queue of 65,536 features, an ITM
  head and a masked-language-model head whose decoder shares the word embeddings.

Pre-training objective (`objective_terms("vlp", batch)`): image-text contrastive loss
with momentum distillation (alpha 0.4), image-text matching with one hard negative per
image and per text drawn from the contrastive similarities, and masked language
modelling, also distilled from the momentum model. Retrieval fine-tuning uses the first
two. Captions of the same image (``batch["image_id"]``) are positives of each other,
in the batch and in the queue, as in ALBEF's retrieval fine-tune.

The distillation targets (`features`) are three groups of hidden states: ``image``
(patch embedding and every block), ``text`` (embeddings and the text-only layers of the
contrastive pass) and ``fusion`` (embeddings and all layers of the masked-language pass,
which runs the text through every layer with the image).
"""

from __future__ import annotations

import copy
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from backbones.base import Backbone, BackboneInfo
from backbones.registry import register_backbone
from common.errors import PelaBenchError

IGNORE_INDEX = -100  # label of tokens the masked-language loss skips
NO_ID = -1  # the queued image id of a pair that came without one (matches no image id)


# -- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 30522
    width: int = 768
    depth: int = 12
    fusion_start: int = 6  # first layer with cross-attention to the image
    heads: int = 12
    mlp_width: int = 3072
    max_positions: int = 512
    type_vocab: int = 2
    dropout: float = 0.1
    eps: float = 1e-12


@dataclass(frozen=True)
class AlbefConfig:
    img_size: int = 384
    patch_size: int = 16
    image_width: int = 768
    image_depth: int = 12
    image_heads: int = 12
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # contrastive projection width
    temp: float = 0.07
    temp_min: float = 0.001  # the learnt temperature is clamped to [temp_min, 0.5], as in ALBEF
    queue_size: int = 65536
    momentum: float = 0.995
    alpha: float = 0.4  # weight of the momentum model's soft targets
    mlm: bool = True  # the masked-language head (pre-training); retrieval models go without


# -- text transformer, from nn.Linear ---------------------------------------------------------
class Attention(nn.Module):
    """Multi-head attention with separate q, k, v and output maps (keys may come from another width).

    `keep_maps` makes it keep its attention probabilities (the unfused path), which
    Grad-CAM reads; otherwise it uses the fused kernel.
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise PelaBenchError(f"attention width {dim} is not a multiple of {heads} heads")
        kv_dim = kv_dim or dim
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout
        self.keep_maps = False
        self.maps: torch.Tensor | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                causal: bool = False) -> torch.Tensor:
        """`mask`: (B, N_context) with 1 for tokens to attend to; `causal`: token i sees tokens <= i
        (the answer decoder's self-attention)."""
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(mask == 0, torch.finfo(q.dtype).min)[:, None, None, :]
        if causal:
            n = q.shape[2]
            future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
            tri = torch.zeros(n, n, dtype=q.dtype, device=q.device).masked_fill(future, torch.finfo(q.dtype).min)
            bias = tri[None, None] if bias is None else (bias + tri).clamp_min(torch.finfo(q.dtype).min)
        p = self.dropout if self.training else 0.0
        if self.keep_maps:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if bias is not None:
                scores = scores + bias
            probs = scores.softmax(dim=-1)
            self.maps = probs  # Grad-CAM differentiates the ITM score with respect to these
            out = F.dropout(probs, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.out(out.transpose(1, 2).flatten(2))


class TextLayer(nn.Module):
    """BERT's post-LayerNorm layer, with optional cross-attention to image tokens."""

    def __init__(self, cfg: TextConfig, image_width: int, fusion: bool) -> None:
        super().__init__()
        self.self_attn = Attention(cfg.width, cfg.heads, dropout=cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.cross_attn = Attention(cfg.width, cfg.heads, kv_dim=image_width, dropout=cfg.dropout) if fusion else None
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps) if fusion else None
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_width)
        self.fc2 = nn.Linear(cfg.mlp_width, cfg.width)
        self.norm3 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, image: torch.Tensor | None,
                image_mask: torch.Tensor | None, causal: bool = False) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, x, mask, causal)))
        if self.cross_attn is not None:
            if image is None:
                raise PelaBenchError("a fusion layer needs the image tokens")
            x = self.norm2(x + self.drop(self.cross_attn(x, image, image_mask)))
        return self.norm3(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.width)
        self.position = nn.Embedding(cfg.max_positions, cfg.width)
        self.token_type = nn.Embedding(cfg.type_vocab, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.position.num_embeddings:
            raise PelaBenchError(f"text of {ids.shape[1]} tokens exceeds the model's "
                                 f"{self.position.num_embeddings} positions")
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.position(pos)[None] + self.token_type.weight[0]
        return self.drop(self.norm(x))


class TextTransformer(nn.Module):
    """BERT-shaped text and fusion layers.

    PyTorch's default initialisation, not BERT's normal(0.02): ALBEF starts from a
    pre-trained BERT, so its random init is never exercised, while a model trained
    from scratch (the embedded world) starts with BERT's init from an almost constant
    [CLS] (its spread over captions measured 0.005 against 0.086) and its momentum-queue
    contrastive loss did not leave that plateau within 14 epochs of 2,000 pairs.
    """

    def __init__(self, cfg: TextConfig, image_width: int) -> None:
        super().__init__()
        if not 0 <= cfg.fusion_start <= cfg.depth:
            raise PelaBenchError(f"fusion_start={cfg.fusion_start} outside [0, {cfg.depth}]")
        self.cfg = cfg
        self.embed = TextEmbeddings(cfg)
        self.layers = nn.ModuleList(TextLayer(cfg, image_width, fusion=i >= cfg.fusion_start)
                                    for i in range(cfg.depth))

    def run(self, x: torch.Tensor, mask: torch.Tensor | None, layers: range, image: torch.Tensor | None = None,
            image_mask: torch.Tensor | None = None, causal: bool = False) -> list[torch.Tensor]:
        """The output of each layer in `layers`, starting from hidden states `x`."""
        states = []
        for i in layers:
            x = self.layers[i](x, mask, image, image_mask, causal)
            states.append(x)
        return states


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder matrix is the word embedding (tied, not a parameter of its own)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(x))), word_embeddings, self.bias)


# -- the model ----------------------------------------------------------------------------------
# The encoders and heads that have an EMA twin named `<name>_m`.
_MOMENTUM_PAIRS = ("visual", "text", "vision_proj", "text_proj", "mlm_head", "decoder", "decoder_head", "cls_head")


class AlbefBackbone(Backbone):
    """ALBEF: image encoder, text/fusion encoder, contrastive projections, ITM and MLM heads."""

    def __init__(self, cfg: AlbefConfig, info: BackboneInfo) -> None:
        super().__init__(None, info)
        self.cfg = cfg
        t = cfg.text
        self.visual = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.image_width,
                                        depth=cfg.image_depth, num_heads=cfg.image_heads, mlp_ratio=4.0,
                                        qkv_bias=True, num_classes=0, norm_layer=_vit_norm)
        self.text = TextTransformer(t, cfg.image_width)
        self.vision_proj = nn.Linear(cfg.image_width, cfg.embed_dim)
        self.text_proj = nn.Linear(t.width, cfg.embed_dim)
        self.itm_head = nn.Linear(t.width, 2)
        self.mlm_head = MLMHead(t) if cfg.mlm else None
        self.temp = nn.Parameter(torch.tensor(cfg.temp))
        self.decoder: TextTransformer | None = None  # VQA only (`attach_answer_decoder`)
        self.decoder_head: MLMHead | None = None
        self.cls_head: nn.Sequential | None = None  # SNLI-VE only (`attach_classifier`)
        for name in _MOMENTUM_PAIRS:
            module = getattr(self, name)
            setattr(self, f"{name}_m", copy.deepcopy(module) if module is not None else None)
        for p in self.momentum_parameters():
            p.requires_grad_(False)
        queue = F.normalize(torch.randn(cfg.embed_dim, cfg.queue_size), dim=0)
        self.register_buffer("image_queue", queue)
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.embed_dim, cfg.queue_size), dim=0))
        self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), NO_ID, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._taps: dict[str, list[torch.Tensor]] | None = None

    # -- momentum model ------------------------------------------------------------------------
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, n), getattr(self, f"{n}_m")) for n in _MOMENTUM_PAIRS if getattr(self, n) is not None]

    def momentum_parameters(self) -> Iterator[nn.Parameter]:
        for _, twin in self.momentum_pairs():
            yield from twin.parameters()

    def ema_parameters(self) -> set[str]:
        return {f"{n}_m.{p}" for n in _MOMENTUM_PAIRS if getattr(self, n) is not None
                for p, _ in getattr(self, f"{n}_m").named_parameters()}

    def requires_grad_(self, requires_grad: bool = True) -> "AlbefBackbone":
        """As `nn.Module.requires_grad_`, except that the momentum copies never train (they follow by EMA)."""
        super().requires_grad_(requires_grad)
        for p in self.momentum_parameters():
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.cfg.momentum
        for online, twin in self.momentum_pairs():
            # By name: a method may add parameters (adapters) to both sides, in any order.
            twin_params = dict(twin.named_parameters())
            for name, p in online.named_parameters():
                twin_params[name].mul_(m).add_(p.detach(), alpha=1 - m)

    @torch.no_grad()
    def _enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, idx: torch.Tensor) -> None:
        n, size = image_feat.shape[0], self.image_queue.shape[1]
        ptr = int(self.queue_ptr)
        cols = (torch.arange(n, device=image_feat.device) + ptr) % size
        self.image_queue[:, cols] = image_feat.T
        self.text_queue[:, cols] = text_feat.T
        self.idx_queue[:, cols] = idx[None]
        self.queue_ptr[0] = (ptr + n) % size

    # -- encoders ----------------------------------------------------------------------------
    def _tap(self, group: str, states: list[torch.Tensor]) -> None:
        if self._taps is not None:
            self._taps[group].extend(states)

    def encode_image(self, image: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Image tokens (B, 1 + patches, width), after the final norm.

        Through timm's own `forward_features`, so a method that rewrites the ViT (ToMe merging
        tokens) works here as it does on a classifier; hooks collect the patch embedding (the
        first block's input) and every block's output for distillation."""
        vit = self.visual_m if momentum else self.visual
        if momentum or self._taps is None:
            return vit.forward_features(image)
        states: list[torch.Tensor] = []
        handles = [vit.blocks[0].register_forward_pre_hook(lambda _m, args: states.append(args[0]))]
        handles += [blk.register_forward_hook(lambda _m, _i, out: states.append(out)) for blk in vit.blocks]
        try:
            tokens = vit.forward_features(image)
        finally:
            for h in handles:
                h.remove()
        self._tap("image", states)
        return tokens

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Text-only hidden states (B, L, width) after the last text-only layer."""
        text = self.text_m if momentum else self.text
        x = text.embed(ids)
        states = [x, *text.run(x, mask, range(text.cfg.fusion_start))]
        if not momentum:
            self._tap("text", states)
        return states[-1]

    def fuse(self, text_states: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor,
             momentum: bool = False) -> torch.Tensor:
        """The fusion layers on text-only states: multimodal states (B, L, width)."""
        text = self.text_m if momentum else self.text
        # Every image token is attended to (ALBEF's image mask is all ones): no mask at all.
        return text.run(text_states, mask, range(text.cfg.fusion_start, text.cfg.depth), image_tokens)[-1]

    def encode_multimodal(self, ids: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor,
                          momentum: bool = False) -> torch.Tensor:
        """All layers from the embeddings with the image (the masked-language pass)."""
        text = self.text_m if momentum else self.text
        x = text.embed(ids)
        states = [x, *text.run(x, mask, range(text.cfg.fusion_start))]
        states += text.run(states[-1], mask, range(text.cfg.fusion_start, text.cfg.depth), image_tokens)
        if not momentum:
            self._tap("fusion", states)
        return states[-1]

    def image_feat(self, tokens: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        proj = self.vision_proj_m if momentum else self.vision_proj
        return F.normalize(proj(tokens[:, 0]), dim=-1)

    def text_feat(self, states: torch.Tensor, mask: torch.Tensor | None = None, momentum: bool = False) -> torch.Tensor:
        """The normalised projection of the [CLS] state (`mask` is unused: [CLS] is always first)."""
        proj = self.text_proj_m if momentum else self.text_proj
        return F.normalize(proj(states[:, 0]), dim=-1)

    def itm_logits(self, text_states: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.itm_head(self.fuse(text_states, mask, image_tokens)[:, 0])

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """ITM logits (B, 2) of matched image-text pairs: the path that scores a retrieval candidate."""
        tokens = self.encode_image(image)
        return self.itm_logits(self.encode_text(text_ids, text_mask), text_mask, tokens)

    # -- objectives ------------------------------------------------------------------------------
    def objective_terms(self, kind: str, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss terms of ALBEF's objective `kind`: "vlp" (ITC + ITM + MLM), "itc_itm"
        (retrieval and grounding fine-tunes), "vqa" (answer generation) or "ve" (3-way classification)."""
        if kind == "vqa":
            return {"vqa": self._answer_loss(batch, self.cfg.alpha)}
        if kind == "ve":
            return {"ve": self._entailment_loss(batch, self.cfg.alpha)}
        if kind not in ("vlp", "itc_itm"):
            raise PelaBenchError(f"ALBEF has no objective {kind!r}; it has 'vlp', 'itc_itm', 'vqa' and 've'")
        image, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
        idx = batch.get("image_id")
        alpha = self.cfg.alpha
        with torch.no_grad():
            self.temp.clamp_(self.cfg.temp_min, 0.5)
        image_tokens = self.encode_image(image)
        text_states = self.encode_text(ids, mask)
        image_feat, text_feat = self.image_feat(image_tokens), self.text_feat(text_states)
        with torch.no_grad():
            if self.training:  # the EMA and the queue move only while training
                self.momentum_update()
            image_tokens_m = self.encode_image(image, momentum=True)
        itc, sim_i2t, sim_t2i, pos = self._contrastive(image_tokens_m, ids, mask, image_feat, text_feat, idx, alpha)
        terms = {"itc": itc, "itm": self._matching(image_tokens, text_states, mask, sim_i2t, sim_t2i, pos)}
        if kind == "vlp":
            terms["mlm"] = self._masked_language(batch, image_tokens, image_tokens_m, alpha)
        return terms

    def _contrastive(self, image_tokens_m, ids, mask, image_feat, text_feat, idx, alpha):
        b = ids.shape[0]
        device = ids.device
        with torch.no_grad():
            image_feat_m = self.image_feat(image_tokens_m, momentum=True)
            text_feat_m = self.text_feat(self.encode_text(ids, mask, momentum=True), momentum=True)
            image_all = torch.cat([image_feat_m.T, self.image_queue.clone()], dim=1)
            text_all = torch.cat([text_feat_m.T, self.text_queue.clone()], dim=1)
            if idx is None:  # pairs without image ids (pre-training captions): each is its own only positive
                pos = torch.eye(b, text_all.shape[1], device=device)
                idx = torch.full((b,), NO_ID, dtype=torch.long, device=device)
            else:
                pos = (idx[:, None] == torch.cat([idx[None], self.idx_queue.clone()], dim=1)).float()
            targets = pos / pos.sum(dim=1, keepdim=True)
            soft_i2t = alpha * (image_feat_m @ text_all / self.temp).softmax(dim=1) + (1 - alpha) * targets
            soft_t2i = alpha * (text_feat_m @ image_all / self.temp).softmax(dim=1) + (1 - alpha) * targets
        sim_i2t = image_feat @ text_all / self.temp
        sim_t2i = text_feat @ image_all / self.temp
        loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * soft_i2t).sum(dim=1).mean()
        loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * soft_t2i).sum(dim=1).mean()
        if self.training:
            self._enqueue(image_feat_m, text_feat_m, idx)
        return (loss_i2t + loss_t2i) / 2, sim_i2t[:, :b], sim_t2i[:, :b], pos[:, :b]

    def _matching(self, image_tokens, text_states, mask, sim_i2t, sim_t2i, pos) -> torch.Tensor:
        """ITM on the true pairs and one hard negative per image and per text (never a positive)."""
        b = image_tokens.shape[0]
        with torch.no_grad():
            w_i2t = (sim_i2t.float().softmax(dim=1) + 1e-5).masked_fill(pos > 0, 0)
            w_t2i = (sim_t2i.float().softmax(dim=1) + 1e-5).masked_fill(pos > 0, 0)
            has_neg = (w_i2t.sum(1) > 0) & (w_t2i.sum(1) > 0)
            # A batch where every other pair is a positive has no negative to draw: fall back to uniform.
            w_i2t = torch.where(has_neg[:, None], w_i2t, torch.ones_like(w_i2t))
            w_t2i = torch.where(has_neg[:, None], w_t2i, torch.ones_like(w_t2i))
            neg_image = torch.multinomial(w_t2i, 1).squeeze(1)  # for each text, an image
            neg_text = torch.multinomial(w_i2t, 1).squeeze(1)  # for each image, a text
        # index_select, not tensor[idx]: a negative drawn twice makes indexing's backward accumulate
        # with atomic adds on a multi-threaded CPU, in an order that changes from run to run.
        texts = torch.cat([text_states, text_states, text_states.index_select(0, neg_text)])
        masks = torch.cat([mask, mask, mask[neg_text]])
        images = torch.cat([image_tokens, image_tokens.index_select(0, neg_image), image_tokens])
        logits = self.itm_logits(texts, masks, images)
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
        return F.cross_entropy(logits, labels)

    def _masked_language(self, batch, image_tokens, image_tokens_m, alpha) -> torch.Tensor:
        if self.mlm_head is None:
            raise PelaBenchError(f"{self.info.name} was built without its masked-language head (mlm=False)")
        ids, labels, mask = batch["mlm_ids"], batch["mlm_labels"], batch["text_mask"]
        logits = self.mlm_head(self.encode_multimodal(ids, mask, image_tokens), self.text.embed.word.weight)
        with torch.no_grad():
            logits_m = self.mlm_head_m(self.encode_multimodal(ids, mask, image_tokens_m, momentum=True),
                                       self.text_m.embed.word.weight)
        picked = labels != IGNORE_INDEX
        if not picked.any():
            return logits.sum() * 0.0
        log_p = F.log_softmax(logits[picked], dim=-1)
        hard = F.nll_loss(log_p, labels[picked])
        soft = -(log_p * logits_m[picked].softmax(dim=-1)).sum(dim=-1).mean()
        return (1 - alpha) * hard + alpha * soft

    # -- VQA: the answer decoder (ALBEF's `text_decoder`) -----------------------------------------
    def question_states(self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                        momentum: bool = False) -> torch.Tensor:
        """The question read with the image through every text and fusion layer (what the decoder attends to)."""
        return self.encode_multimodal(text_ids, text_mask, self.encode_image(image, momentum), momentum)

    def answer_logits(self, question: torch.Tensor, question_mask: torch.Tensor, answer_ids: torch.Tensor,
                      answer_mask: torch.Tensor, momentum: bool = False) -> torch.Tensor:
        """Next-token logits (N, L, vocab) of answers ``[CLS] words [SEP]``, each attending causally to
        itself and fully to its question's states."""
        if self.decoder is None:
            raise PelaBenchError(f"{self.info.name} has no answer decoder: call attach_answer_decoder() first")
        decoder = self.decoder_m if momentum else self.decoder
        head = self.decoder_head_m if momentum else self.decoder_head
        x = decoder.run(decoder.embed(answer_ids), answer_mask, range(len(decoder.layers)), question,
                        question_mask, causal=True)[-1]
        return head(x, decoder.embed.word.weight)

    def _answer_loss(self, batch: Mapping[str, Any], alpha: float) -> torch.Tensor:
        """ALBEF's VQA loss: each question's answers weighted by how many annotators gave them, the
        decoder's token losses summed per answer, distilled from the momentum model (alpha), over the batch.

        `answer_ids` / `answer_mask` are (B, A, L), `answer_weight` (B, A): A answer slots per question,
        unused slots weighted 0 (they are not decoded at all)."""
        ids, mask, weight = batch["answer_ids"], batch["answer_mask"], batch["answer_weight"]
        b, slots = weight.shape
        used = weight.flatten() > 0
        owner = torch.arange(b, device=weight.device).repeat_interleave(slots)[used]
        a_ids, a_mask, w = ids.flatten(0, 1)[used], mask.flatten(0, 1)[used], weight.flatten()[used]
        q_mask = batch["text_mask"][owner]
        question = self.question_states(batch["image"], batch["text_ids"], batch["text_mask"]).index_select(0, owner)
        log_p = F.log_softmax(self.answer_logits(question, q_mask, a_ids, a_mask)[:, :-1], dim=-1)
        targets, real = a_ids[:, 1:], a_mask[:, 1:] > 0
        hard = -log_p.gather(-1, targets[..., None]).squeeze(-1)
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            question_m = self.question_states(batch["image"], batch["text_ids"], batch["text_mask"], True)[owner]
            soft_targets = self.answer_logits(question_m, q_mask, a_ids, a_mask, momentum=True)[:, :-1].softmax(-1)
        soft = -(log_p * soft_targets).sum(-1)
        per_answer = (((1 - alpha) * hard + alpha * soft) * real).sum(1)
        return (w * per_answer).sum() / b

    @torch.no_grad()
    def rank_answers(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, answer_ids: torch.Tensor,
                     answer_mask: torch.Tensor, k: int) -> torch.Tensor:
        """Index into the candidate list (answer_ids: (C, L)) of each question's answer, as ALBEF ranks:
        the `k` candidates whose first word is likeliest, re-scored by the likelihood of the whole answer."""
        question = self.question_states(image, ids, mask)
        n, c = question.shape[0], answer_ids.shape[0]
        start = answer_ids[:1, :1].expand(n, 1)  # every answer starts with [CLS]
        first = self.answer_logits(question, mask, start, torch.ones_like(start))[:, 0].softmax(-1)
        k = max(1, min(k, c))
        top = first[:, answer_ids[:, 1]].topk(k, dim=1).indices  # (n, k) candidate indices
        rows = torch.arange(n, device=question.device).repeat_interleave(k)
        cand, cand_mask = answer_ids[top.flatten()], answer_mask[top.flatten()]
        log_p = F.log_softmax(self.answer_logits(question[rows], mask[rows], cand, cand_mask)[:, :-1], dim=-1)
        token = log_p.gather(-1, cand[:, 1:, None]).squeeze(-1) * (cand_mask[:, 1:] > 0)
        best = token.sum(1).view(n, k).argmax(1, keepdim=True)
        return top.gather(1, best).squeeze(1)

    # -- SNLI-VE: a classifier on the fused [CLS] ---------------------------------------------------
    def classify(self, image: torch.Tensor, text_ids: torch.Tensor, text_mask: torch.Tensor,
                 momentum: bool = False) -> torch.Tensor:
        if self.cls_head is None:
            raise PelaBenchError(f"{self.info.name} has no classifier head: call attach_classifier() first")
        head = self.cls_head_m if momentum else self.cls_head
        return head(self.question_states(image, text_ids, text_mask, momentum)[:, 0])

    def _entailment_loss(self, batch: Mapping[str, Any], alpha: float) -> torch.Tensor:
        logits = self.classify(batch["image"], batch["text_ids"], batch["text_mask"])
        hard = F.cross_entropy(logits, batch["label"])
        with torch.no_grad():
            if self.training:
                self.momentum_update()
            soft_targets = self.classify(batch["image"], batch["text_ids"], batch["text_mask"], True).softmax(-1)
        soft = -(F.log_softmax(logits, dim=-1) * soft_targets).sum(-1).mean()
        return (1 - alpha) * hard + alpha * soft

    def text_vocab_size(self) -> int:
        return self.text.embed.word.num_embeddings

    def fusion_cross_attention(self, index: int) -> Attention:
        """The cross-attention module of fusion layer `index` (0 = the first layer that sees the image)."""
        t = self.text.cfg
        n = t.depth - t.fusion_start
        if not 0 <= index < n:
            raise PelaBenchError(f"{self.info.name} has {n} fusion layers; there is no fusion layer {index}")
        return self.text.layers[t.fusion_start + index].cross_attn

    # -- the backbone contract ------------------------------------------------------------------
    @contextmanager
    def capture_features(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        groups: dict[str, list[torch.Tensor]] = {g: [] for g in self.info.feature_groups}
        outer, self._taps = self._taps, groups
        try:
            yield groups
        finally:
            self._taps = outer

    def features(self, batch: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        """The three tapped passes of pre-training, on the batch's own (already masked) text."""
        with self.capture_features() as groups:
            tokens = self.encode_image(batch["image"])
            self.encode_text(batch["text_ids"], batch["text_mask"])
            self.encode_multimodal(batch["mlm_ids"], batch["text_mask"], tokens)
        return groups

    def blocks(self) -> list[nn.Module]:
        return list(self.visual.blocks)

    def token_encoder(self) -> nn.Module:
        """The image encoder, a plain timm ViT (ToMe merges its tokens; the fusion layers attend to fewer)."""
        return self.visual

    def stages(self) -> list[nn.Module]:
        return [self.visual]  # the image encoder's blocks; `thin` also thins the text stacks

    def attention_modules(self) -> list[nn.Module]:
        """The image encoder's attention (timm's, with a fused qkv): what TinyBERT's attention loss reads."""
        return [blk.attn for blk in self.visual.blocks]

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.visual.num_prefix_tokens)

    def image_block_states(self, image: torch.Tensor) -> list[torch.Tensor]:
        with self.capture_features() as groups:
            self.encode_image(image)
        return groups["image"][1:]  # the blocks' outputs, without the patch embedding

    def forward_visible(self, image: torch.Tensor, keep_idx: torch.Tensor) -> list[torch.Tensor]:
        """The image encoder's block outputs on the prefix tokens and the visible patches `keep_idx`."""
        from backbones.vit import forward_visible

        return forward_visible(self.visual, image, keep_idx)

    def thin(self, select: Callable[[list[int]], list[list[int]]]) -> tuple[dict[str, list[int]], list[int]]:
        """The image encoder, the text-only layers and the fusion layers each thinned by `select`, in place
        (the momentum copies alike, so the EMA still pairs every weight); the first layer kept from
        the fusion stack is the new `fusion_start`."""
        t = self.cfg.text
        # Each stack on its own: a rule for a hierarchy's stages (Swin's) must not spare a shallow stack here.
        (keep_image,), (keep_text,), (keep_fusion,) = (select([n]) for n in (len(self.visual.blocks), t.fusion_start,
                                                                                t.depth - t.fusion_start))
        kept_layers = [*keep_text, *(t.fusion_start + i for i in keep_fusion)]
        text_cfg = replace(t, depth=len(kept_layers), fusion_start=len(keep_text))
        for vit in (self.visual, self.visual_m):
            vit.blocks = nn.Sequential(*[vit.blocks[i] for i in keep_image])
        for text in (self.text, self.text_m):
            text.layers = nn.ModuleList(text.layers[i] for i in kept_layers)
            text.cfg = text_cfg
        self.cfg = replace(self.cfg, image_depth=len(keep_image), text=text_cfg)
        self.info = replace(self.info, depth=len(keep_image))
        # Each group's states start with the embedding (state 0), then one per kept layer.
        maps = {"image": [0, *(1 + i for i in keep_image)], "text": [0, *(1 + i for i in keep_text)],
                "fusion": [0, *(1 + i for i in kept_layers)]}
        return maps, list(keep_image)

    def reset_classifier(self, num_classes: int) -> None:
        raise PelaBenchError(f"{self.info.name} has no classifier to reset")

    def drop_mlm_head(self) -> "AlbefBackbone":
        """The retrieval model: the masked-language heads (online and momentum) removed, in place."""
        self.mlm_head = self.mlm_head_m = None
        return self

    def _drop_contrastive(self) -> None:
        """Remove what only pre-training and retrieval use: projections, ITM head, queues, MLM heads."""
        self.vision_proj = self.text_proj = self.vision_proj_m = self.text_proj_m = self.itm_head = None
        self.mlm_head = self.mlm_head_m = None
        for name in ("image_queue", "text_queue", "idx_queue"):
            if hasattr(self, name):
                delattr(self, name)

    def attach_answer_decoder(self) -> "AlbefBackbone":
        """The VQA model's structure, in place (ALBEF's `text_decoder`, Table 5's 581 M / 259 M).

        A decoder as deep as the fusion stack, every layer cross-attending to the encoder's
        states, plus its prediction head, with momentum copies. As ALBEF's VQA script does,
        decoder layer i starts from encoder layer ``fusion_start + i`` and the embeddings and
        head from the encoder's; the contrastive projections, the ITM head and the queues go.
        The layers are copies of the model's own, so a compressed student (factorised, with
        adapters) gets a decoder compressed the same way.
        """
        t = self.cfg.text
        cfg = replace(t, depth=t.depth - t.fusion_start, fusion_start=0)
        with torch.device("meta"):  # the shell only: its layers are replaced below
            decoder = TextTransformer(replace(cfg, depth=0), t.width)
        decoder.cfg = cfg
        decoder.embed = copy.deepcopy(self.text.embed)
        layers = []
        for i in range(cfg.depth):
            layer = copy.deepcopy(self.text.layers[t.fusion_start + i])
            if self.cfg.image_width != t.width:  # its keys read the question now, not the image
                layer.cross_attn = Attention(t.width, t.heads, dropout=t.dropout).to(self.text.embed.word.weight.device)
            layers.append(layer)
        decoder.layers = nn.ModuleList(layers)
        head = copy.deepcopy(self.mlm_head) if self.mlm_head is not None else MLMHead(cfg)
        self.decoder, self.decoder_head = decoder, head
        self.decoder_m, self.decoder_head_m = copy.deepcopy(decoder), copy.deepcopy(head)
        for twin in (self.decoder_m, self.decoder_head_m):
            twin.requires_grad_(False)
        self._drop_contrastive()
        return self

    def attach_classifier(self, num_classes: int) -> "AlbefBackbone":
        """SNLI-VE's model, in place: an MLP (width -> width -> `num_classes`) on the fused [CLS],
        with its momentum copy, as ALBEF's `cls_head`; the contrastive and MLM parts go."""
        w = self.cfg.text.width
        device = self.text.embed.word.weight.device
        self.cls_head = nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, num_classes)).to(device)
        self.cls_head_m = copy.deepcopy(self.cls_head).requires_grad_(False)
        self._drop_contrastive()
        return self

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accept a checkpoint in salesforce/ALBEF's layout (pre-training or fine-tuned) as well as our own."""
        if not any(k.startswith(("visual_encoder.", "text_encoder.")) for k in state):
            return dict(state)
        out = {}
        for key, value in state.items():
            new = official_key(key)
            if new is None:
                continue
            if new.endswith("pos_embed") and value.shape != getattr(self, new.split(".")[0]).pos_embed.shape:
                grid = self.visual.patch_embed.grid_size
                value = resample_abs_pos_embed(value, list(grid), num_prefix_tokens=1)
            out[new] = value
        return out


_vit_norm = partial(nn.LayerNorm, eps=1e-6)  # ALBEF's ViT; timm's default is 1e-5


# salesforce/ALBEF's names -> ours. BERT sub-layer names inside `encoder.layer.N.`:
_BERT_LAYER = {
    "attention.self.query": "self_attn.q", "attention.self.key": "self_attn.k",
    "attention.self.value": "self_attn.v", "attention.output.dense": "self_attn.out",
    "attention.output.LayerNorm": "norm1",
    "crossattention.self.query": "cross_attn.q", "crossattention.self.key": "cross_attn.k",
    "crossattention.self.value": "cross_attn.v", "crossattention.output.dense": "cross_attn.out",
    "crossattention.output.LayerNorm": "norm2",
    "intermediate.dense": "fc1", "output.dense": "fc2", "output.LayerNorm": "norm3",
}
_BERT_EMBED = {"word_embeddings": "word", "position_embeddings": "position",
               "token_type_embeddings": "token_type", "LayerNorm": "norm"}
_OFFICIAL_TOP = {"visual_encoder": "visual", "visual_encoder_m": "visual_m",
                 "text_encoder": "text", "text_encoder_m": "text_m"}


def official_key(key: str) -> str | None:
    """Our name for one salesforce/ALBEF state-dict key (None: nothing to load, e.g. a tied copy)."""
    top, _, rest = key.partition(".")
    if top not in _OFFICIAL_TOP:
        return key  # vision_proj(_m), text_proj(_m), itm_head, temp, queues keep their names
    ours = _OFFICIAL_TOP[top]
    if top.startswith("visual_encoder"):
        return f"{ours}.{rest}"  # ALBEF's ViT uses timm's names
    momentum = "_m" if top.endswith("_m") else ""
    rest = rest.removeprefix("bert.")
    if rest.startswith("cls.predictions."):
        part = rest.removeprefix("cls.predictions.")
        head = {"transform.dense.weight": "dense.weight", "transform.dense.bias": "dense.bias",
                "transform.LayerNorm.weight": "norm.weight", "transform.LayerNorm.bias": "norm.bias",
                "bias": "bias"}.get(part)
        return f"mlm_head{momentum}.{head}" if head else None  # decoder: tied to the word embeddings
    if rest.startswith("embeddings."):
        name, _, param = rest.removeprefix("embeddings.").rpartition(".")
        return f"{ours}.embed.{_BERT_EMBED[name]}.{param}" if name in _BERT_EMBED else None
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", rest)
    if m and m.group(2) in _BERT_LAYER:
        return f"{ours}.layers.{m.group(1)}.{_BERT_LAYER[m.group(2)]}.{m.group(3)}"
    if rest.startswith("pooler."):
        return None  # ALBEF builds BERT without its pooler; older checkpoints may still carry one
    raise PelaBenchError(f"unrecognised ALBEF checkpoint key {key!r}")


# -- presets ----------------------------------------------------------------------------------------
# The official PELA code keeps full-rank every linear layer named like the projections
# or the MLM head (`_proj`, `cls`), and (`lowrank_min_out`) every one with under 10 outputs.
_ALBEF_OMIT = ("vision_proj*", "text_proj*", "mlm_head*", "decoder_head*", "cls_head*")
_ADAPTER_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "self_attn.q", "self_attn.k", "self_attn.v",
                    "self_attn.out", "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.out", "fc1", "fc2")


# The official ALBEF pre-training (ALBEF/Pretrain.py:73-84, models/model_pretrain.py:215, 300-322): feature
# distillation at 0.1 over the image, text and multimodal states, the perturbation at weight 1, radius 1e-3.
OFFICIAL_ALBEF_PELA = (("alpha", 0.1), ("beta", 1.0), ("epsilon", 1e-3), ("rwp_form", "squared"),
                       ("rwp_reduce", "mean"), ("fd_targets", "blocks"))


def albef_info(name: str, cfg: AlbefConfig) -> BackboneInfo:
    return BackboneInfo(
        name=name, family="albef", embed_dims=(cfg.image_width,), depth=cfg.image_depth, img_size=cfg.img_size,
        num_classes=0, paper_ratio=3.0, lowrank_omit=_ALBEF_OMIT, lowrank_min_out=10,
        pretrain_task="vlp", adapter_targets=_ADAPTER_TARGETS, classifier=(),
        feature_groups=("image", "text", "fusion"), token_merging=True, halvable_stages=True,
        attention_scores=True, masking="drop", pela_official=OFFICIAL_ALBEF_PELA,
    )


def _build(name: str, cfg: AlbefConfig, pretrained: bool, overrides: dict[str, Any]) -> AlbefBackbone:
    if pretrained:
        raise PelaBenchError(f"{name} has no hub weights; pass weights=PATH to an ALBEF checkpoint (e.g. ALBEF_4M.pth)")
    text_keys = set(TextConfig.__dataclass_fields__)
    text = {k: overrides.pop(k) for k in list(overrides) if k in text_keys}
    unknown = set(overrides) - set(AlbefConfig.__dataclass_fields__)
    if unknown:
        raise PelaBenchError(f"{name} has no setting(s) {', '.join(sorted(unknown))}")
    cfg = AlbefConfig(**{**cfg.__dict__, **overrides, "text": TextConfig(**{**cfg.text.__dict__, **text})})
    return AlbefBackbone(cfg, albef_info(name, cfg))


@register_backbone
def albef_base(pretrained: bool = False, **overrides: Any) -> AlbefBackbone:
    """ALBEF at the paper's sizes: ViT-B/16 at 384 px + BERT-base text and fusion, momentum copies.

    419.1 M parameters as a retrieval model (`mlm=False`); PELA's preset (ratio 3) gives 173.5 M (Table 4).
    """
    return _build("albef_base", AlbefConfig(), pretrained, overrides)


@register_backbone
def albef_tiny(pretrained: bool = False, **overrides: Any) -> AlbefBackbone:
    """A CPU-sized ALBEF for the synthetic captions: 64 px, 8 px patches, width 64, 4 + 4 layers.

    Its temperature stays at or above 0.05. The synthetic captions are near-duplicates of one
    another far more often than real ones, and with ALBEF's floor (0.001) the learnt temperature
    fell to 0.01 within 20 epochs. At that sharpness ITM's hard negatives (drawn from the
    contrastive similarities) are the batch's closest captions, often ones the picture fits as
    well, and the ITM loss never left the class prior (0.60 nats against 0.64). Measured on a
    teacher trained with ALBEF's floor (its temperature had fallen to 0.014), training ITM alone
    for 3 epochs: with negatives drawn at that temperature a matching pair scored p = 0.34 and a
    shuffled one 0.17; at 0.07, 0.59 and 0.10. With the floor, the teacher's ITM loss was 0.54
    after 12 epochs and 0.59 after 20.
    """
    cfg = AlbefConfig(img_size=64, patch_size=8, image_width=64, image_depth=4, image_heads=2,
                      text=TextConfig(vocab_size=128, width=64, depth=4, fusion_start=2, heads=2, mlp_width=256,
                                      max_positions=40, dropout=0.0),
                      embed_dim=32, queue_size=512, temp_min=0.05)
    return _build("albef_tiny", cfg, pretrained, overrides)
