"""The float64 problem on which the head-Taylor tests (exact-head, TrH, adv-trace) check their closed
forms against autograd: a 4-8 channel SmallCNN with a 16-wide head, and a clean and a perturbed batch."""

import torch

from ratkit.methods import AT, MART, TRADES, forward_outputs, train_attack, trades_attack
from ratkit.models import build_model

EPS = 0.1
BASES = {
    "at": lambda: AT(attack=train_attack(EPS, steps=2)),
    "trades": lambda: TRADES(attack=trades_attack(EPS, steps=2)),
    "mart": lambda: MART(attack=train_attack(EPS, steps=2, random_start="normal")),
}


def head_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return build_model("smallcnn", channels=(4, 8), hidden=16).to(dtype)


def head_batch(n=12, dtype=torch.float64, seed=0):
    """``(x, x_adv, y)``: x uniform, x_adv x plus Gaussian noise of scale 0.1 clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g, dtype=dtype)
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, x_adv, torch.randint(0, 10, (n,), generator=g)


def head_outputs(model, x, x_adv, y):
    return forward_outputs(model, x, x_adv, y, with_clean=True)
