"""The mm* bridge: torchvision stand-ins for mmcv's compiled ops, the checkpoint allow-list, the backbone adapter."""

import fractions
import pickle
import sys

import tasks.mm  # installs the mmcv._ext stand-in, so it must precede every mm* import

# isort: split
import numpy as np
import pytest
import torch
import torchvision
from mmcv.ops import DeformConv2d, RoIAlign, batched_nms, nms, roi_align
from torch import nn

from backbones import create_backbone
from common.errors import PelaBenchError
from tasks.mm import ops
from tasks.mm.ops import UnsupportedOpError


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def random_boxes(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 20 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g), g


def random_rois(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100  # image coordinates of a 128 px input (feature stride 4)
    wh = torch.rand(n, 2, generator=g) * 40 + 2
    batch = torch.randint(0, 2, (n, 1), generator=g).float()
    return torch.cat([batch, xy, xy + wh], dim=1)


# -- nms ------------------------------------------------------------------------------


def test_nms_matches_torchvision():
    """mmcv.ops.nms keeps torchvision's indices, in order, and builds dets from them."""
    boxes, scores, _ = random_boxes()
    dets, inds = nms(boxes, scores, 0.5)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert 0 < len(expected) < len(boxes)  # the threshold actually suppresses something
    assert torch.equal(inds, expected)
    assert dets.shape == (len(expected), 5)
    assert torch.equal(dets[:, :4], boxes[inds])
    assert torch.equal(dets[:, 4], scores[inds])


def test_batched_nms_matches_torchvision():
    """Class-aware batched NMS keeps the same set of boxes as torchvision's."""
    boxes, scores, g = random_boxes()
    idxs = torch.randint(0, 3, (len(boxes),), generator=g)
    dets, keep = batched_nms(boxes, scores, idxs, nms_cfg={"type": "nms", "iou_threshold": 0.5}, class_agnostic=False)
    expected = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert set(keep.tolist()) == set(expected.tolist())
    assert torch.equal(dets[:, :4], boxes[keep]) and torch.equal(dets[:, 4], scores[keep])


def test_nms_legacy_offset_is_refused():
    """mmcv's "+1" box convention is not silently computed with torchvision's."""
    boxes, scores, _ = random_boxes()
    with pytest.raises(UnsupportedOpError, match="offset=1"):
        sys.modules["mmcv._ext"].nms(boxes, scores, iou_threshold=0.5, offset=1)
    assert issubclass(UnsupportedOpError, PelaBenchError)


# -- RoIAlign -------------------------------------------------------------------------


def test_roi_align_forward_matches_torchvision():
    """mmcv's RoIAlign module (aligned, adaptive sampling) gives torchvision's output."""
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 32, 32)
    rois = random_rois()
    layer = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
    assert not layer.use_torchvision  # the mmcv path, through the stand-in kernel
    out = layer(feat, rois)
    expected = torchvision.ops.roi_align(feat, rois, (7, 7), 0.25, 0, True)
    assert out.shape == (len(rois), 8, 7, 7)
    assert torch.allclose(out, expected)
    assert torch.allclose(roi_align(feat, rois, (7, 7), 0.25, 0, "avg", True), expected)  # the functional form


def test_roi_align_backward_matches_torchvision():
    """The stand-in backward kernel gives torchvision's input gradient."""
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 32, 32)
    rois = random_rois()
    upstream = torch.randn(len(rois), 8, 7, 7)
    a = feat.clone().requires_grad_(True)
    RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)(a, rois).backward(upstream)
    b = feat.clone().requires_grad_(True)
    torchvision.ops.roi_align(b, rois, (7, 7), 0.25, 0, True).backward(upstream)
    assert a.grad.abs().sum() > 0
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_roi_align_max_pooling_is_refused():
    """torchvision has average pooling only; max mode says so instead of averaging."""
    layer = RoIAlign((7, 7), spatial_scale=0.25, pool_mode="max")
    with pytest.raises(UnsupportedOpError, match="max"):
        layer(torch.randn(2, 8, 32, 32), random_rois())


# -- everything else ------------------------------------------------------------------


def test_other_ops_fail_when_called_naming_themselves():
    """Ops the stand-in lacks import fine and fail on use with a message naming the op."""
    conv = DeformConv2d(3, 3, 3)
    with pytest.raises(UnsupportedOpError) as e:
        conv(torch.randn(1, 3, 8, 8), torch.zeros(1, 18, 6, 6))
    assert "deform_conv_forward" in str(e.value) and "mmcv-lite" in str(e.value)

    made_up = sys.modules["mmcv._ext"].some_made_up_op
    assert callable(made_up)
    with pytest.raises(UnsupportedOpError, match="some_made_up_op"):
        made_up(1, key=2)


def test_mmengine_still_sees_no_full_mmcv():
    """The stand-in has no loader, so mmengine's "is mmcv-full installed?" check stays False."""
    from mmengine.utils.dl_utils import mmcv_full_available

    assert mmcv_full_available() is False


def test_install_is_idempotent():
    """A second install returns the module already registered."""
    assert ops.install() is ops.install() is sys.modules["mmcv._ext"]


# -- checkpoints ----------------------------------------------------------------------


def test_mmengine_checkpoint_loads_with_weights_only(tmp_path):
    """History buffers and numpy arrays load under the safe loader, without allow-listing getattr."""
    from mmengine.logging import HistoryBuffer

    buf = HistoryBuffer()
    for v in (1.0, 2.0, 4.0):
        buf.update(v)
    ckpt = {"buffer": buf, "array": np.arange(5, dtype=np.float32), "scalar": buf.mean(), "tensor": torch.arange(4.0)}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)

    assert "builtins.getattr" not in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    loaded = torch.load(path, weights_only=True)
    assert isinstance(loaded["buffer"], HistoryBuffer)
    assert loaded["buffer"].mean() == buf.mean() and loaded["buffer"].current() == 4.0
    np.testing.assert_array_equal(loaded["buffer"].data[0], buf.data[0])
    np.testing.assert_array_equal(loaded["array"], ckpt["array"])
    assert loaded["scalar"] == ckpt["scalar"]
    assert torch.equal(loaded["tensor"], ckpt["tensor"])


def test_safe_loader_still_refuses_other_classes(tmp_path):
    """The allow-list is narrow: a class outside it still fails to load with weights_only=True."""
    path = tmp_path / "bad.pth"
    torch.save({"x": fractions.Fraction(1, 3)}, path)
    with pytest.raises(pickle.UnpicklingError, match="Fraction"):
        torch.load(path, weights_only=True)


# -- the backbone adapter -------------------------------------------------------------


def test_adapter_registered_in_mmseg_and_mmdet():
    """Both toolboxes resolve `type='PelaBackbone'` to the project's adapter."""
    from mmdet.registry import MODELS as D
    from mmseg.registry import MODELS as S

    assert S.get("PelaBackbone") is tasks.mm.PelaBackbone
    assert D.get("PelaBackbone") is tasks.mm.PelaBackbone


def test_adapter_wraps_a_backbone_as_a_pyramid():
    """The adapter drops the classifier, attaches the pyramid and returns its four maps."""
    torch.manual_seed(0)
    backbone = create_backbone("deit_micro")
    adapter = tasks.mm.PelaBackbone(backbone=backbone)
    assert adapter.out_channels == tuple(backbone.pyramid_channels)
    assert adapter.strides == tuple(backbone.pyramid_strides)
    assert backbone.info.num_classes == 0 and backbone.pyramid_neck is not None
    outs = adapter(torch.randn(1, 3, 64, 64))
    assert isinstance(outs, tuple) and len(outs) == 4
    assert [o.shape[1] for o in outs] == list(adapter.out_channels)


def test_adapter_refuses_a_plain_module():
    """Only project backbones can be wrapped; anything else is a user error naming its type."""
    with pytest.raises(PelaBenchError, match="Linear"):
        tasks.mm.PelaBackbone(backbone=nn.Linear(4, 4))
