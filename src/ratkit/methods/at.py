"""PGD adversarial training (Madry et al., 2018): minimise the cross-entropy at a PGD point."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F

from ..attacks import PGDConfig
from .base import BaseMethod, Outputs, train_attack


@dataclass
class AT(BaseMethod):
    """PGD-AT: uniform random start, cross-entropy attack, loss CE(f(x_adv), y)."""

    attack: PGDConfig = field(default_factory=lambda: train_attack(8 / 255, loss="ce", random_start="uniform"))
    needs_clean: ClassVar[bool] = False
    primary_term: ClassVar[str] = "adv_ce"

    def terms(self, out: Outputs):
        return {"adv_ce": F.cross_entropy(out.logits_adv, out.y)}
