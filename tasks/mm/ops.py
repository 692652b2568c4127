"""The three compiled mmcv ops Cascade Mask R-CNN needs, served by torchvision.

`mmcv-lite` ships mmcv's Python code without its compiled extension
``mmcv._ext``; every ``mmcv.ops`` module asks for that extension at import, so
``import mmdet.models`` fails outright. Full mmcv does not build against torch
2.14. This module registers a stand-in ``mmcv._ext`` before any mm* package is
imported: ``nms``, ``roi_align_forward`` and ``roi_align_backward`` run on
torchvision's kernels (CPU and CUDA); any other op raises `UnsupportedOpError`
naming itself when it is *called*, so importing the model zoo still works and a
config that needs, say, deformable convolution fails with a clear message.

mmcv's own Python wrappers (``mmcv.ops.nms``, ``batched_nms``, ``RoIAlign``,
``roi_align``) stay in charge of argument handling; only the kernels change.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any, Callable

import torch
from torchvision.ops import nms as tv_nms
from torchvision.ops import roi_align as tv_roi_align

from common.errors import PelaBenchError

EXT_NAME = "mmcv._ext"
PROVIDED = ("nms", "roi_align_forward", "roi_align_backward")


class UnsupportedOpError(PelaBenchError):
    """An mmcv op that needs mmcv's compiled extension, which mmcv-lite lacks."""


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices kept by NMS, highest score first (mmcv's ``ext_module.nms``)."""
    if offset != 0:
        # mmcv's legacy "+1" box convention (mmdet 1.x); mmdet 3 always passes 0.
        raise UnsupportedOpError(f"mmcv nms with offset={offset}: only offset=0 is provided (torchvision's convention)")
    return tv_nms(boxes, scores, float(iou_threshold))


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor, argmax_y: torch.Tensor,
                      argmax_x: torch.Tensor, *, aligned_height: int, aligned_width: int, spatial_scale: float,
                      sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """mmcv's in-place RoIAlign forward; average pooling only (pool_mode 1), as mmdet's RoI extractors use."""
    _check_avg(pool_mode)
    out = tv_roi_align(input, rois.to(input.dtype), (aligned_height, aligned_width), spatial_scale,
                       sampling_ratio, aligned)
    output.copy_(out)


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor, argmax_x: torch.Tensor,
                       grad_input: torch.Tensor, *, aligned_height: int, aligned_width: int, spatial_scale: float,
                       sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """mmcv's in-place RoIAlign backward, through torchvision's registered backward kernel."""
    _check_avg(pool_mode)
    n, c, h, w = grad_input.shape
    grad = torch.ops.torchvision._roi_align_backward(
        grad_output, rois.to(grad_output.dtype), spatial_scale, aligned_height, aligned_width, n, c, h, w,
        sampling_ratio, aligned)
    grad_input.copy_(grad)


def _check_avg(pool_mode: int) -> None:
    if pool_mode != 1:
        raise UnsupportedOpError("mmcv RoIAlign with pool_mode='max' is not provided (torchvision has average pooling only)")


def _unsupported(name: str) -> Callable[..., Any]:
    def op(*_args: Any, **_kwargs: Any) -> Any:
        raise UnsupportedOpError(
            f"mmcv op '{name}' needs mmcv's compiled extension, which mmcv-lite does not have; pela-bench provides "
            f"only {', '.join(PROVIDED)} (tasks/mm/ops.py). Choose a config without it, or install a full mmcv "
            "built for this torch.")
    op.__name__ = name
    return op


class _Extension(types.ModuleType):
    """A module whose provided ops are real and whose every other attribute is a failing op."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # keep import machinery and pickling probes honest
            raise AttributeError(name)
        return _unsupported(name)


def install() -> types.ModuleType:
    """Register the stand-in extension (idempotent); must run before mmcv.ops is imported."""
    existing = sys.modules.get(EXT_NAME)
    if existing is not None:
        return existing
    if "mmcv.ops" in sys.modules:
        raise RuntimeError("tasks.mm.ops.install() ran after mmcv.ops was imported; import tasks.mm first")
    ext = _Extension(EXT_NAME, __doc__)
    ext.__file__ = __file__
    # No loader: tools that ask "is full mmcv installed?" (mmengine's mmcv_full_available) must still hear no.
    ext.__spec__ = importlib.machinery.ModuleSpec(EXT_NAME, loader=None)
    for name in PROVIDED:
        setattr(ext, name, globals()[name])
    sys.modules[EXT_NAME] = ext
    return ext
