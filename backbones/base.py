"""The backbone contract every family implements.

A `Backbone` wraps one network and declares its own structure, so generic code
(methods, tasks, the suite) asks instead of reaching into timm internals:

- `features` / `capture_features`: the hidden states to distil, as named groups
  (``{"blocks": [...]}`` for a ViT or Swin; a vision-language model adds its own
  groups such as ``"text"`` and ``"fusion"``);
- `stages`: the block containers a depth-halved student thins out (TinyBERT, MaskAlign);
- `attention_modules` / `attention_scores`: the attention layers whose scores can be read;
- `token_encoder`: the plain ViT (timm's or open_clip's) whose tokens ToMe may merge;
- `forward_pyramid`: four feature maps for dense prediction heads;
- `BackboneInfo`: the paper preset (`paper_ratio`, `lowrank_omit`), the linear
  layers adapters target, the classifier, the pre-training task, and which of the
  capabilities above exist, so a method can refuse a backbone before any work.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from common.errors import PelaBenchError


# The official DeiT scripts (guoyang9/PELA DeiT/scripts/train_base.sh, DeiT/main.py:182-186): feature
# distillation of every block at weight 1, the weight perturbation off (its weight defaults to 0).
OFFICIAL_DEIT_PELA: tuple[tuple[str, Any], ...] = (
    ("alpha", 1.0), ("beta", 0.0), ("epsilon", 1e-3), ("rwp_form", "squared"), ("rwp_reduce", "mean"),
    ("fd_targets", "blocks"),
)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str  # descriptive only ("vit", "swin"); generic code asks the capabilities below
    embed_dims: tuple[int, ...]
    depth: int
    img_size: int
    num_classes: int
    # The paper's compression ratio and the linear layers its preset keeps full-rank
    # (fnmatch patterns over module names, matched against every dotted suffix).
    paper_ratio: float
    lowrank_omit: tuple[str, ...] = field(default_factory=tuple)
    lowrank_min_out: int = 0  # linear layers with fewer outputs stay full-rank (ALBEF's ITM head)
    # PELA's loss settings as this family's official script runs them (`methods.pela_recipes`, the
    # "official" recipe), as (option, value) pairs; the default is the official DeiT scripts'.
    pela_official: tuple[tuple[str, Any], ...] = OFFICIAL_DEIT_PELA
    hub_name: str | None = None
    # The task whose objective trains the teacher and pre-trains every student.
    pretrain_task: str = "cls"
    # fnmatch patterns of the linear layers adapter methods (LoRA) attach to, and the
    # classifier's module names (trained alongside adapters, dropped by dense heads).
    adapter_targets: tuple[str, ...] = field(default_factory=tuple)
    classifier: tuple[str, ...] = ("head",)
    # Capabilities; False means the method that needs one refuses this backbone up front.
    feature_groups: tuple[str, ...] = ("blocks",)
    halvable_stages: bool = False  # `thin()` can drop blocks of its stages (`stages()`, or a family's own stacks)
    attention_scores: bool = False  # `attention_scores()` can read pre-softmax scores
    token_merging: bool = False  # `token_encoder()` is a plain ViT, timm's or open_clip's
    # How a masked-image student sees an image: "drop" (only visible tokens enter the
    # encoder, a ViT) or "mask_token" (hidden patches replaced by a token, a Swin).
    masking: str | None = None
    # How a vision-language backbone reads text: "vocab" (the data root's vocab.txt: BERT's
    # WordPiece, or the synthetic world's words) or "clip_bpe" (open_clip's bundled BPE).
    tokenizer: str = "vocab"


class Backbone(nn.Module):
    """A wrapped network plus its metadata.

    Block outputs are collected with forward hooks, so the wrapped model's own
    forward (and its fused kernels) runs unchanged.
    """

    def __init__(self, model: nn.Module | None, info: BackboneInfo) -> None:
        """`model`: the one wrapped network, or None for a family built from several (ALBEF)."""
        super().__init__()
        if model is not None:
            self.model = model
        self.info = info
        # Created by `attach_pyramid` for dense prediction only, so classification models
        # (and their parameter counts) never carry it.
        self.pyramid_neck: nn.Module | None = None

    # -- what subclasses provide -------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """Containers whose `.blocks` (an `nn.Sequential`) hold the blocks, in order."""
        raise PelaBenchError(f"{self.info.name} declares no block stages")

    def attention_modules(self) -> list[nn.Module]:
        """One attention module per block with a fused `qkv` linear, `num_heads` and `scale`."""
        raise PelaBenchError(f"{self.info.name} declares no readable attention")

    def token_encoder(self) -> nn.Module:
        raise PelaBenchError(f"{self.info.name} has no plain ViT token encoder")

    def _pyramid_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four NCHW maps straight from the network, before the neck."""
        raise NotImplementedError

    def _make_pyramid_neck(self) -> nn.Module:
        raise NotImplementedError

    def _accept_any_input_size(self) -> None:
        """Let the network take dense crops and padded batches of any size."""
        raise NotImplementedError

    @property
    def pyramid_strides(self) -> tuple[int, ...]:
        """Strides of the four `forward_pyramid` maps (4/8/16/32 for the paper's backbones)."""
        raise NotImplementedError

    @property
    def pyramid_channels(self) -> tuple[int, ...]:
        raise NotImplementedError

    # -- the contract --------------------------------------------------------------
    @property
    def embed_dims(self) -> tuple[int, ...]:
        return self.info.embed_dims

    @property
    def depth(self) -> int:
        return self.info.depth

    @property
    def lowrank_omit(self) -> tuple[str, ...]:
        return self.info.lowrank_omit

    @property
    def paper_ratio(self) -> float:
        return self.info.paper_ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.model(image)

    def pooled_features(self, image: torch.Tensor) -> torch.Tensor:
        """(batch, dim): the image's feature as the classifier reads it, pooled, before the head
        (the instance feature of the paper's Fig. 2). timm's ViT and Swin split their forward here."""
        return self.model.forward_head(self.model.forward_features(image), pre_logits=True)

    def block_stages(self) -> list[int]:
        """The stage index of every block, in block order."""
        return [s for s, stage in enumerate(self.stages()) for _ in stage.blocks]

    def thin(self, select: Callable[[list[int]], list[list[int]]]) -> tuple[dict[str, list[int]], list[int]]:
        """Keep, in place, the blocks `select` picks from each stage (given each stage's block count,
        it returns the indices to keep), for a depth-reduced student.

        Returns, per feature group, the teacher hidden state (index into the teacher's
        `features` group) that each of the student's states copies and learns from, and the
        teacher block behind each remaining block of `blocks()` (and `attention_modules()`)."""
        stages = self.stages()
        keeps = select([len(stage.blocks) for stage in stages])
        layer_map, offset = [], 0
        for stage, keep in zip(stages, keeps):
            n = len(stage.blocks)
            stage.blocks = nn.Sequential(*[stage.blocks[i] for i in keep])
            layer_map += [offset + i for i in keep]
            offset += n
        self.info = replace(self.info, depth=len(layer_map))
        return {"blocks": layer_map}, layer_map

    def image_block_states(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Every image-encoder block's output (what masked-image distillation aligns)."""
        return self.features({"image": image})["blocks"]

    @contextmanager
    def capture_features(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Collect the hidden states of every forward run inside the block, as named groups."""
        groups: dict[str, list[torch.Tensor]] = {"blocks": []}
        handles = [blk.register_forward_hook(lambda _m, _i, out: groups["blocks"].append(out))
                   for blk in self.blocks()]
        try:
            yield groups
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def capture_pooled(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Collect, as group ``"pooled"``, the pooled feature the classifier reads (its input) in every
        forward run inside the block: what the official PELA Swin code distils instead of every block."""
        get = getattr(getattr(self, "model", None), "get_classifier", None)
        classifier = get() if callable(get) else None
        if not isinstance(classifier, nn.Module):
            raise PelaBenchError(f"{self.info.name} has no classifier reading a pooled feature "
                                 f"(fd_targets=pooled needs one; use 'blocks' or block indices)")
        groups: dict[str, list[torch.Tensor]] = {"pooled": []}
        handle = classifier.register_forward_pre_hook(lambda _m, args: groups["pooled"].append(args[0]))
        try:
            yield groups
        finally:
            handle.remove()

    def features(self, batch: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
        """The distillation targets of one batch: every block's output under ``"blocks"``."""
        with self.capture_features() as groups:
            self(batch["image"])
        return groups

    @contextmanager
    def attention_scores(self) -> Iterator[list[torch.Tensor]]:
        """Every block's pre-softmax attention scores, (batch, heads, N, N), during a forward."""
        scores: list[torch.Tensor] = []

        def hook(attn: nn.Module):
            def fn(_module, _inputs, qkv: torch.Tensor) -> None:
                b, n, _ = qkv.shape  # a Swin's windows count as batch entries
                q, k, _v = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
                scores.append((q * attn.scale) @ k.transpose(-2, -1))
            return fn

        handles = [attn.qkv.register_forward_hook(hook(attn)) for attn in self.attention_modules()]
        try:
            yield scores
        finally:
            for h in handles:
                h.remove()

    # -- dense prediction ------------------------------------------------------------
    def attach_pyramid(self) -> "Backbone":
        """Make this backbone ready for dense heads, in place: any input size, plus its family's neck.

        The neck is new and trainable; the classifier stays (callers that count a
        dense model's parameters drop it with `reset_classifier(0)`).
        """
        if self.pyramid_neck is None:
            self._accept_any_input_size()
            neck = self._make_pyramid_neck()
            ref = next(self.model.parameters(), None)
            self.pyramid_neck = neck.to(ref.device) if ref is not None else neck
        return self

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four NCHW feature maps at `pyramid_strides` with `pyramid_channels` channels.

        An input that is not a whole number of patches is padded at the bottom and
        right first, so the maps describe the padded image (as mmseg's ViT does).
        """
        if self.pyramid_neck is None:
            raise PelaBenchError(f"{self.info.name}: forward_pyramid needs attach_pyramid() first (dense heads call it)")
        return list(self.pyramid_neck(self._pyramid_features(x)))

    def ema_parameters(self) -> set[str]:
        """Names of parameters that follow others by EMA and never train (ALBEF's momentum copies)."""
        return set()

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint in a foreign layout (an official release's names) in this model's names."""
        return dict(state)

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)
        self.info = replace(self.info, num_classes=num_classes)

    def extra_repr(self) -> str:
        return f"name={self.info.name!r}"
