"""TRADES (Zhang et al., 2019): clean cross-entropy plus beta * KL(p(x) || p(x_adv))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch.nn.functional as F

from ..attacks import PGDConfig
from .base import BaseMethod, Outputs, train_attack


def trades_attack(eps: float, steps: int = 10, step_size: float | None = None, norm: str = "Linf",
                  precision: str = "float32") -> PGDConfig:
    """TRADES' attack: KL to the clean prediction, start x + 0.001 N(0, 1), eval mode."""
    return train_attack(eps, steps, step_size, norm, loss="kl", random_start="normal", precision=precision)


@dataclass
class TRADES(BaseMethod):
    """The clean logits are computed once and reused by both terms (the original recomputes them)."""

    attack: PGDConfig = field(default_factory=lambda: trades_attack(8 / 255))
    beta: float = 6.0
    needs_clean: ClassVar[bool] = True
    labels_clean: ClassVar[bool] = True
    primary_term: ClassVar[str] = "natural"

    def terms(self, out: Outputs):
        kl = F.kl_div(F.log_softmax(out.logits_adv, dim=1), F.softmax(out.logits_clean, dim=1),
                      reduction="batchmean")
        return {"natural": F.cross_entropy(out.logits_clean, out.y), "robust": self.beta * kl}
