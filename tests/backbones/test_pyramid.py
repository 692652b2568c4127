"""Dense-ready backbones: `attach_pyramid` / `forward_pyramid` for dense and compressed micro models."""

import copy
from itertools import pairwise

import pytest
import torch

from backbones import create_backbone
from backbones.vit import pyramid_block_indices
from common.errors import PelaBenchError
from methods import create_method, lowrank_modules

SIZES = (64, 96, 100)  # 100 px is not a multiple of deit_micro's 8 px patch (nor of swin_micro's stride 8)


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def make(name, **overrides):
    torch.manual_seed(0)
    return create_backbone(name, **overrides).eval()


def check_pyramid(backbone, size):
    """Four NCHW maps with `pyramid_channels` channels, each within one cell of padded input / stride.

    The input is first padded to a whole number of patches (as mmseg's ViT does,
    and as mm's data preprocessors pad whole batches), so the maps describe that.
    """
    outs = backbone.forward_pyramid(torch.randn(1, 3, size, size))
    assert len(outs) == 4
    patch = backbone.model.patch_embed.patch_size[0]
    padded = -(-size // patch) * patch
    for out, channels, stride in zip(outs, backbone.pyramid_channels, backbone.pyramid_strides):
        assert out.dim() == 4 and out.shape[:2] == (1, channels)
        assert all(abs(s - padded / stride) < 1 for s in out.shape[2:]), (tuple(out.shape), stride, size)
    return outs


def test_pyramid_block_indices():
    """Blocks 4/6/8/12 of 12 (mmseg's ViT + UperNet), the same fractions for other depths."""
    assert pyramid_block_indices(12) == (3, 5, 7, 11)
    assert pyramid_block_indices(24) == (7, 11, 15, 23)
    for depth in (6, 3):
        idx = pyramid_block_indices(depth)
        assert len(idx) == 4 and list(idx) == sorted(idx)
        assert 0 <= idx[0] and idx[-1] == depth - 1


@pytest.mark.parametrize("name", ["deit_micro", "swin_micro"])
def test_forward_pyramid_needs_attach(name):
    """Classification models carry no neck; asking for a pyramid says what to call first."""
    b = make(name)
    assert b.pyramid_neck is None
    with pytest.raises(PelaBenchError, match="attach_pyramid"):
        b.forward_pyramid(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("name", ["deit_micro", "swin_micro"])
def test_strides_double(name):
    """The four levels are one octave apart."""
    strides = make(name).pyramid_strides
    assert len(strides) == 4
    assert all(b == 2 * a for a, b in pairwise(strides))


@pytest.mark.parametrize("name,size", [
    *[("deit_micro", size) for size in SIZES],
    *[("swin_micro", size) for size in SIZES],
])
def test_pyramid_shapes_at_any_input_size(name, size):
    """After attach_pyramid the backbone takes any input size and returns maps at its strides."""
    b = make(name).attach_pyramid()
    with torch.no_grad():
        check_pyramid(b, size)


@pytest.mark.parametrize("name", ["deit_micro", "swin_micro"])
def test_attach_pyramid_is_idempotent_and_on_the_model_device(name):
    """A second call keeps the same neck; the neck lives where the model does."""
    b = make(name)
    assert b.attach_pyramid() is b
    neck = b.pyramid_neck
    assert neck is not None and b.attach_pyramid().pyramid_neck is neck
    device = next(b.model.parameters()).device
    assert all(p.device == device for p in neck.parameters())


def test_attach_pyramid_keeps_vit_classification_at_native_size():
    """Dynamic-size mode changes nothing for the size the ViT was built for."""
    b = make("deit_micro")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = b(x)
        after = b.attach_pyramid()(x)
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("name", ["deit_micro", "swin_micro"])
def test_gradients_reach_the_first_block_and_the_neck(name):
    """The pyramid is trainable end to end: no detach between the network, the neck and the output."""
    b = make(name).train().attach_pyramid()
    sum(o.sum() for o in b.forward_pyramid(torch.randn(1, 3, 64, 64))).backward()
    first = list(b.blocks()[0].parameters())
    assert first and all(p.grad is not None for p in first)
    assert any(p.grad.abs().sum() > 0 for p in first)
    neck = list(b.pyramid_neck.parameters())
    assert neck and all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck)


# -- compressed students ------------------------------------------------------------


def frozen_teacher(name, **overrides):
    t = make(name, num_classes=4, **overrides)
    for p in t.parameters():
        p.requires_grad_(False)
    return t


@pytest.fixture(scope="module")
def teachers():
    """Frozen micro teachers; the Swin is narrowed (widths 16-128) to keep its SVDs cheap."""
    return {"deit_micro": frozen_teacher("deit_micro"), "swin_micro": frozen_teacher("swin_micro", embed_dim=16)}


@pytest.mark.parametrize("name,method", [
    ("deit_micro", "pela"), ("deit_micro", "tinybert"), ("deit_micro", "lora"),
    ("swin_micro", "pela"), ("swin_micro", "tinybert"),
])
def test_compressed_students_give_a_pyramid(teachers, name, method):
    """Factorised, depth-halved and adapter students are all dense-ready; the teacher is left alone."""
    teacher = teachers[name]
    student = create_method(method).build_student(teacher).eval()
    if method == "tinybert":
        assert student.info.depth < teacher.info.depth
    if method == "pela":
        assert lowrank_modules(student)
    student.attach_pyramid()
    with torch.no_grad():
        check_pyramid(student, 96)  # a size the teacher was not built for
    assert teacher.pyramid_neck is None


def test_dense_copy_leaves_the_classification_teacher_alone(teachers):
    """Making a deep copy dense-ready neither adds a neck to nor switches dynamic sizing on in the original."""
    teacher = teachers["deit_micro"]
    dense = copy.deepcopy(teacher).attach_pyramid()
    assert dense.pyramid_neck is not None and dense.model.dynamic_img_size
    assert teacher.pyramid_neck is None
    assert not teacher.model.dynamic_img_size and teacher.model.patch_embed.strict_img_size
