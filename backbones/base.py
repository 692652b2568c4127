"""The backbone contract every family implements.

A `Backbone` wraps one timm-style network and exposes what the benchmark needs:
every block's output (the distillation targets), the logits, and the metadata of
the paper preset (compression ratio and the layers it keeps full-rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from common.errors import PelaBenchError


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str
    embed_dims: tuple[int, ...]
    depth: int
    img_size: int
    num_classes: int
    # The paper's compression ratio and the linear layers its preset keeps full-rank
    # (fnmatch patterns over module names, matched against every dotted suffix).
    paper_ratio: float
    lowrank_omit: tuple[str, ...] = field(default_factory=tuple)
    hub_name: str | None = None


class Backbone(nn.Module):
    """A wrapped network plus its metadata.

    Subclasses say which modules are the transformer blocks (`blocks()`); block
    outputs are collected with forward hooks so the wrapped model's own forward
    (and its fused kernels) runs unchanged.
    """

    def __init__(self, model: nn.Module, info: BackboneInfo) -> None:
        super().__init__()
        self.model = model
        self.info = info
        # Created by `attach_pyramid` for dense tasks only, so classification models
        # (and their parameter counts) never carry it.
        self.pyramid_neck: nn.Module | None = None

    # -- what subclasses provide -------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _pyramid_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four NCHW maps straight from the network, before the neck."""
        raise NotImplementedError

    def _make_pyramid_neck(self) -> nn.Module:
        raise NotImplementedError

    def _accept_any_input_size(self) -> None:
        """Let the network take the dense tasks' crops and padded batches of any size."""
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.model(x)

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output, in order."""
        return self.forward_with_tokens(x)[1]

    def forward_with_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every block's output from a single forward pass."""
        outputs: list[torch.Tensor] = []
        handles = [
            blk.register_forward_hook(lambda _m, _i, out: outputs.append(out))
            for blk in self.blocks()
        ]
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, outputs

    # -- dense prediction ------------------------------------------------------------
    def attach_pyramid(self) -> "Backbone":
        """Make this backbone dense-ready, in place: any input size, plus its family's neck.

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
            raise PelaBenchError(f"{self.info.name}: forward_pyramid needs attach_pyramid() first (dense tasks call it)")
        return list(self.pyramid_neck(self._pyramid_features(x)))

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)
        self.info = replace(self.info, num_classes=num_classes)

    def extra_repr(self) -> str:
        return f"name={self.info.name!r}"
