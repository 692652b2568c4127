import pytest
import torch

from backbones import create_backbone
from tasks.classification import CrossEntropy


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):  # tests/conftest.py: micro models lose time to intra-op threads
    yield


def frozen(backbone):
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval()


@pytest.fixture(scope="module")
def teacher():
    """A frozen micro DeiT with 4 classes; the head is randomised (jax init zeroes it)."""
    torch.manual_seed(0)
    t = create_backbone("deit_micro", num_classes=4).eval()
    torch.nn.init.normal_(t.model.head.weight, std=0.5)
    return frozen(t)


@pytest.fixture(scope="module")
def swin_teacher():
    """A frozen micro Swin with 4 classes."""
    torch.manual_seed(0)
    return frozen(create_backbone("swin_micro", num_classes=4))


@pytest.fixture
def objective():
    """The classification base objective every method is handed (methods compute no task loss)."""
    return CrossEntropy()


def _image_batch(n: int, seed: int = 1, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, size, size, generator=g), "label": torch.arange(n) % 4}


@pytest.fixture
def make_batch():
    """``make_batch(n, seed=1)``: a dict batch, the format of every task:
    ``{"image": (n, 3, 64, 64), "label": (n,)}`` with labels 0, 1, 2, 3, 0, ..."""
    return _image_batch
