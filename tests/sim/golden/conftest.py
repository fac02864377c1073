"""Shared fixtures of the golden-model tests: the MiniLM checkpoint, loaded once, single-threaded torch."""

import pytest
import torch
from spattn.sim.golden.minilm import load_minilm


@pytest.fixture(autouse=True)
def one_thread():
    """The golden model's small kernels run many times faster on one thread on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm():
    return load_minilm()
