"""Shared tiny fixtures: models small enough that the whole suite runs in minutes on 2 cores."""

import pytest
import torch
from helpers import TinyNet

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (6,), generator=g)
    return x, y
