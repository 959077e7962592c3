"""MART (Wang et al., 2020): boosted CE on x_adv plus a KL weighted by (1 - p_y(x))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attacks import PGDConfig, kl_to_target
from .base import BaseMethod, InvalidSetting, Outputs

# the authors' constants: -log(BOOST_MARGIN - q_r + LOG_EPS) boosts the runner-up class r, log(q + LOG_EPS)
# in the KL, whose weight is WEIGHT_MARGIN - p_y
BOOST_MARGIN, LOG_EPS, WEIGHT_MARGIN = 1.0001, 1e-12, 1.0000001


def runner_up(probs, y):
    """The most probable class other than y (the class MART's boosted cross-entropy pushes down)."""
    top2 = probs.argsort(dim=1)[:, -2:]
    return torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])


@dataclass
class MART(BaseMethod):
    """As in the authors' code: CE attack from x + 0.001 N(0, 1); loss = BCE(adv) + beta * robust.

    MART has no clean cross-entropy term; under RAT its adversarial classification term
    ("adv_bce") takes the (1 - alpha) weight, as PGD-AT's adversarial CE does.

    Example::

        method = MART(attack=MART.training_attack(8 / 255, steps=10), beta=6.0)
        method.step(model, optimizer, x, y)
    """

    attack: PGDConfig = field(default_factory=lambda: MART.training_attack(8 / 255))
    beta: float = 6.0
    needs_clean: ClassVar[bool] = True
    primary_term: ClassVar[str] = "adv_bce"
    attack_objective: ClassVar[str] = "ce"
    attack_start: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        if not self.beta >= 0:  # written so that NaN is refused too
            raise InvalidSetting("MART", "beta", f"must be >= 0, got {self.beta}")

    def terms(self, out: Outputs):
        y = out.y
        adv_probs = F.softmax(out.logits_adv, dim=1)
        boosted = runner_up(adv_probs, y)
        bce = F.cross_entropy(out.logits_adv, y) + F.nll_loss(torch.log(BOOST_MARGIN - adv_probs + LOG_EPS), boosted)
        nat_probs = F.softmax(out.logits_clean, dim=1)
        true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
        kl = kl_to_target(out.logits_adv, nat_probs, log_eps=LOG_EPS, probs=adv_probs)
        robust = (kl * (WEIGHT_MARGIN - true_probs)).mean()
        return {"adv_bce": bce, "robust": self.beta * robust}
