"""MART (Wang et al., 2020): boosted CE on x_adv plus a KL weighted by (1 - p_y(x))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attacks import PGDConfig
from .base import BaseMethod, Outputs, train_attack


@dataclass
class MART(BaseMethod):
    """As in the authors' code: CE attack from x + 0.001 N(0, 1); loss = BCE(adv) + beta * robust.

    MART has no clean cross-entropy term; under RAT its adversarial classification term
    ("adv_bce") takes the (1 - alpha) weight, as PGD-AT's adversarial CE does.
    """

    attack: PGDConfig = field(default_factory=lambda: train_attack(8 / 255, loss="ce", random_start="normal"))
    beta: float = 6.0
    needs_clean: ClassVar[bool] = True
    primary_term: ClassVar[str] = "adv_bce"

    def terms(self, out: Outputs):
        y = out.y
        adv_probs = F.softmax(out.logits_adv, dim=1)
        top2 = adv_probs.argsort(dim=1)[:, -2:]
        runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        bce = F.cross_entropy(out.logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), runner_up)
        nat_probs = F.softmax(out.logits_clean, dim=1)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = (torch.xlogy(nat_probs, nat_probs) - nat_probs * torch.log(adv_probs + 1e-12)).sum(dim=1)
        robust = (kl * (1.0000001 - true_probs)).mean()
        return {"adv_bce": bce, "robust": self.beta * robust}
