import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Micro models gain nothing from intra-op threads, and lose a lot to them on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
