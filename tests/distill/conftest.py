import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models train fastest on one thread; more only spin against each other on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
