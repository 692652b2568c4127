"""The method contract and its registry.

A method turns a frozen teacher into a student (`build_student`) and, if it trains
(`trains`), defines the pre-training objective as named terms (`loss`), so the
tables can show each term. ``loss()["loss"]`` is the total that is optimised.

The base objective (cross-entropy for a classifier, ITC + ITM + MLM for a
vision-language model) is handed in by the task or backbone that owns it; a
method adds its own terms and never writes a task loss. What a method needs from
a backbone (block stages, readable attention, a token encoder) it asks through
`BackboneInfo` in `check_backbone`, which refuses a misfit before any work.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from common.errors import PelaBenchError
from common.objective import Batch, Objective


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
    # What the student cannot provide, and why: a task that needs it (`Task.needs`,
    # e.g. "pyramid" for dense heads) skips this method with the reason.
    lacks: ClassVar[dict[str, str]] = {}
    options_cls: ClassVar[type[MethodOptions]] = MethodOptions
    # Options that `options_label` leaves out because the row shows them in a field of their own.
    label_skips: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    @staticmethod
    def check_backbone(info: Any) -> None:
        """Raise `PelaBenchError` if the method cannot apply to a backbone (`BackboneInfo`)."""

    def build_student(self, teacher: nn.Module, calibration: Any = None) -> nn.Module:
        """The student, from the frozen teacher; `calibration` (`methods.calibration.Calibration`) is the
        teacher's layer-input statistics, collected by the suite where `calibration_batches` asks for them."""
        raise NotImplementedError

    def calibration_batches(self) -> int:
        """How many training batches of layer-input statistics `build_student` needs (0: none)."""
        needs = getattr(self.options, "needs_calibration", None)
        return self.options.calib_batches if needs is not None and needs() else 0

    def on_step(self, student: nn.Module, progress: float) -> None:
        """Called before every training step with progress in [0, 1), and with 1.0 at the end."""

    def finalize(self, student: nn.Module) -> nn.Module:
        """The deployable student after training (e.g. PC-LoRA drops its frozen weights)."""
        return student

    def loss(self, student: nn.Module, teacher: nn.Module, batch: Batch, base: Objective) -> dict[str, torch.Tensor]:
        """Named loss terms; "loss" is the weighted total. This default trains on the base objective alone."""
        value = base.loss(base.forward(student, batch), batch)
        return {"loss": value, "base": value.detach()}

    def unsupported(self, needs: tuple[str, ...]) -> str | None:
        """Why this method's student cannot serve a task that needs `needs` (None: it can)."""
        return next((self.lacks[n] for n in needs if n in self.lacks), None)

    def compression_ratio(self, info: Any) -> float | None:
        """The ratio the student is factorised at (the backbone's preset unless set); None: not factorised."""
        if not self.takes_ratio:
            return None
        if getattr(self.options, "params", None) is not None or getattr(self.options, "flops", None) is not None:
            return None  # sized by a budget: no single ratio describes it (the row's params do)
        return float(self.options.ratio) if self.options.ratio is not None else info.paper_ratio

    def table_fields(self, info: Any = None) -> dict[str, Any]:
        """Per-row flags the leaderboard shows for this method on a backbone (`BackboneInfo`; PELA:
        which loss terms its recipe turns on)."""
        return {}

    def recipe(self) -> str | None:
        """The named recipe the method's settings come from (PELA: "official" or "paper"); None: it has none."""
        return None

    def resolved(self, info: Any) -> dict[str, Any]:
        """The settings the method trains with on a backbone once its recipe is applied (saved with every
        row and part of the student's stage hash); empty for a method whose options say it all."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Training state the method itself holds (a random generator), saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def options_label(self) -> str:
        """The options set away from this method's defaults, e.g. ``ratio=2`` (empty: the preset)."""
        defaults = asdict(self.options_cls(**_METHODS[self.name][1])) if self.name in _METHODS else {}
        changed = {k: v for k, v in asdict(self.options).items()
                   if defaults.get(k, v) != v and k not in self.label_skips}
        return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in sorted(changed.items()))

    def describe(self) -> dict[str, Any]:
        opts = asdict(self.options)
        if opts.get("keep_full_rank") is None:
            # Absent at its default, so results stored before the option existed keep their config hash.
            opts.pop("keep_full_rank", None)
        own_defaults = getattr(self.options, "defaults", None)
        for key, value in (own_defaults() if own_defaults is not None else {}).items():
            if opts.get(key) == value:  # likewise the low-rank start's options (`methods.factorized`)
                opts.pop(key)
        return {"method": self.name, **opts}


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` with gradients on (the student starts from the teacher)."""
    student = copy.deepcopy(model)
    # The module's own method, so a model with parameters that never train (ALBEF's
    # momentum copies, updated by EMA) keeps them frozen.
    return student.requires_grad_(True)


_METHODS: dict[str, tuple[type[Method], dict[str, Any]]] = {}


def register_method(name: str, **defaults: Any) -> Callable[[type[Method]], type[Method]]:
    """Register `cls` under `name`; `defaults` pin options for a named variant (an ablation row)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = (cls, defaults)
        return cls

    return wrap


def pinned_options(name: str) -> dict[str, Any]:
    """The options a registered variant fixes (``pela_no_fd``: alpha=0)."""
    method_class(name)
    return dict(_METHODS[name][1])


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise PelaBenchError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    return _METHODS[name][0]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        (item, *_rest) = typing.get_args(tp) or (Any,)
        plural = {float: "numbers", int: "integers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(item, _type_name(item))}"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _fits(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0] if args else Any) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:  # JSON has one number type; an integer is a fine float, a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_option_types(method: str, options_cls: type[MethodOptions], options: dict[str, Any]) -> None:
    """Each value against the option's declared type; a misfit is one line naming it."""
    hints = typing.get_type_hints(options_cls)
    for key, value in options.items():
        if key in hints and not _fits(value, hints[key]):
            raise PelaBenchError(f"option {key}={value!r}: {method} expects {_type_name(hints[key])}")


def _as_declared(options_cls: type[MethodOptions], options: dict[str, Any]) -> dict[str, Any]:
    """Integers given for float options become floats, so `ratio=2` and `ratio=2.0` are one setting
    (one label, one stage hash)."""
    hints = typing.get_type_hints(options_cls)
    out = dict(options)
    for key, value in options.items():
        tp = hints.get(key)
        allowed = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
            out[key] = float(value)
    return out


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
    options = {k: v for k, v in options.items() if v is not None}  # None: the option's default
    check_option_types(name, cls.options_cls, options)
    options = _as_declared(cls.options_cls, options)
    clashes = [k for k, v in options.items() if k in pinned and v != pinned[k]]
    if clashes:
        raise PelaBenchError(
            f"method {name!r} fixes {', '.join(f'{k}={pinned[k]}' for k in clashes)}; "
            f"use the method it is a variant of to change it"
        )
    merged = {**options, **pinned}
    method = cls(cls.options_cls(**merged))
    method.name = name
    return method
