"""TRADES (Zhang et al., 2019): clean cross-entropy plus beta * KL(p(x) || p(x_adv))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F

from ..attacks import PGDConfig, kl_to_target
from ..choices import TRADES_BETA
from .base import BaseMethod, InvalidSetting, Outputs


def trades_attack(eps: float, steps: int = 10, step_size: float | None = None, norm: str = "Linf",
                  precision: str = "float32") -> PGDConfig:
    """TRADES' attack: KL to the clean prediction, start x + 0.001 N(0, 1), eval mode
    (``TRADES.training_attack``, kept as a function for scripts).

    Example::

        x_adv = pgd(model, x, y, trades_attack(8 / 255))   # PGD-10, step eps/4 by default
    """
    return TRADES.training_attack(eps, steps, step_size, norm, precision)


@dataclass
class TRADES(BaseMethod):
    """The clean logits are computed once and reused by both terms (the original recomputes them).

    Example::

        method = TRADES(attack=trades_attack(8 / 255, steps=10), beta=6.0)
        method.step(model, optimizer, x, y)
    """

    attack: PGDConfig = field(default_factory=lambda: TRADES.training_attack(8 / 255))
    beta: float = TRADES_BETA
    needs_clean: ClassVar[bool] = True
    labels_clean: ClassVar[bool] = True
    primary_term: ClassVar[str] = "natural"
    attack_objective: ClassVar[str] = "kl"
    attack_start: ClassVar[str] = "normal"

    def __post_init__(self) -> None:
        if not self.beta >= 0:  # written so that NaN is refused too
            raise InvalidSetting("TRADES", "beta", f"must be >= 0, got {self.beta}")

    def terms(self, out: Outputs):
        kl = kl_to_target(out.logits_adv, F.softmax(out.logits_clean, dim=1), "batchmean")
        return {"natural": F.cross_entropy(out.logits_clean, out.y), "robust": self.beta * kl}
