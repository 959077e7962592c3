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


@pytest.fixture(autouse=True)
def fast_machine_for_budget_plans(monkeypatch):
    """In-process runs plan their budget (the CPU preset has train.budget_s) as on a fast machine, so
    that no test depends on this machine's speed; tests/test_budget.py injects its own speeds."""
    import ratkit.train.budget as budget

    monkeypatch.setattr(budget, "measure_speed", lambda cfg, info, build: (1e-4, 1e-7))
