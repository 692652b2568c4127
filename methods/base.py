"""The method contract and its registry.

A method turns a frozen teacher into a student (`build_student`) and, if it trains
(`trains`), defines the pre-training objective as named terms (`loss`), so the
tables can show each term. ``loss()["loss"]`` is the total that is optimised.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PelaBenchError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MethodOptions:
    """Options shared by the factorising methods; subclasses add their own."""

    ratio: float | None = None  # None: the backbone's paper preset
    # fnmatch patterns of the linear layers left full-rank (see `methods.lowrank.matches_any`);
    # None: the backbone's paper preset (`info.lowrank_omit`)
    keep_full_rank: list[str] | None = None

    def __post_init__(self) -> None:
        k = self.keep_full_rank
        if k is not None and (not isinstance(k, (list, tuple)) or not all(isinstance(p, str) and p for p in k)):
            raise PelaBenchError(f"option keep_full_rank must be a list of layer-name patterns, e.g. "
                                 f"'[\"head*\", \"norm\"]', got {k!r}")
        if k is not None:
            self.keep_full_rank = list(k)


def refuse_ratio(options: MethodOptions, method: str, reason: str) -> None:
    """For methods that do not factorise: a compression ratio or full-rank list is a user error, not ignored."""
    if options.ratio is not None:
        raise PelaBenchError(f"{method} takes no compression ratio: {reason}")
    if options.keep_full_rank is not None:
        raise PelaBenchError(f"{method} takes no keep_full_rank: {reason}")


class Method:
    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    takes_ratio: ClassVar[bool] = True  # False: the method refuses a compression ratio
    # Why the student cannot feed a dense head (None: it can). Checked before any work starts.
    dense_unsupported: ClassVar[str | None] = None
    options_cls: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    @staticmethod
    def check_backbone(info: Any) -> None:
        """Raise `PelaBenchError` if the method cannot apply to a backbone (`BackboneInfo`)."""

    def build_student(self, teacher: nn.Module) -> nn.Module:
        raise NotImplementedError

    def on_step(self, student: nn.Module, progress: float) -> None:
        """Called before every training step with progress in [0, 1), and with 1.0 at the end."""

    def finalize(self, student: nn.Module) -> nn.Module:
        """The deployable student after training (e.g. PC-LoRA drops its frozen weights)."""
        return student

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Named loss terms; "loss" is the weighted total."""
        images, labels = batch
        logits = student(images)
        base = F.cross_entropy(logits, labels)
        return {"loss": base, "base": base.detach()}

    def describe(self) -> dict[str, Any]:
        opts = asdict(self.options)
        if opts.get("keep_full_rank") is None:
            # Absent at its default, so results stored before the option existed keep their config hash.
            opts.pop("keep_full_rank", None)
        return {"method": self.name, **opts}


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with gradients on (the student starts from the teacher)."""
    student = copy.deepcopy(model)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


_METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {}


def register_method(name: str, **defaults: Any) -> Callable[[type[Method]], type[Method]]:
    """Register `cls` under `name`; `defaults` pin options for a named variant (an ablation row)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = (cls, defaults)
        return cls

    return wrap


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise PelaBenchError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    return _METHODS[name][0]


def create_method(name: str, **options: Any) -> Method:
    """Instantiate a registered method; unknown options are an error naming the option."""
    cls = method_class(name)
    pinned = _METHODS[name][1]
    known = {f.name for f in fields(cls.options_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise PelaBenchError(
            f"method {name!r} has no option(s) {', '.join(unknown)}; it takes: {', '.join(sorted(known))}"
        )
    clashes = [k for k, v in options.items() if k in pinned and v is not None and v != pinned[k]]
    if clashes:
        raise PelaBenchError(
            f"method {name!r} fixes {', '.join(f'{k}={pinned[k]}' for k in clashes)}; "
            f"use the method it is a variant of to change it"
        )
    merged = {**{k: v for k, v in options.items() if v is not None}, **pinned}
    method = cls(cls.options_cls(**merged))
    method.name = name
    return method
