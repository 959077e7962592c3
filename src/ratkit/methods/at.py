"""PGD adversarial training (Madry et al., 2018): minimise the cross-entropy at a PGD point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F

from ..attacks import PGDConfig
from .base import BaseMethod, Outputs


@dataclass
class AT(BaseMethod):
    """PGD-AT: uniform random start, cross-entropy attack, loss CE(f(x_adv), y).

    Example::

        method = AT(attack=AT.training_attack(8 / 255, steps=10))  # or AT.from_settings(8 / 255)
        method.step(model, optimizer, x, y)
    """

    attack: PGDConfig = field(default_factory=lambda: AT.training_attack(8 / 255))
    needs_clean: ClassVar[bool] = False
    primary_term: ClassVar[str] = "adv_ce"
    attack_objective: ClassVar[str] = "ce"
    attack_start: ClassVar[str] = "uniform"
    awp_gamma: ClassVar[float] = 1e-2  # AWP's authors' AT-AWP setting (5e-3 is their TRADES-AWP one)

    def terms(self, out: Outputs):
        return {"adv_ce": F.cross_entropy(out.logits_adv, out.y)}
