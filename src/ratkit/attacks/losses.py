"""Per-example attack objectives (higher = stronger attack); reduction is left to the caller."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "cw", "kl")


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy per example."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """CW margin per example: best wrong logit minus the true logit.

    The true class is masked with -inf (not by subtracting a constant), so the max is over
    the other classes whatever the logit scale.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(dim=1) - true


def kl_to_target(logits: Tensor, target_probs: Tensor) -> Tensor:
    """KL(target || softmax(logits)) per example, summed over classes (TRADES' attack loss)."""
    log_p = F.log_softmax(logits, dim=1)
    return (torch.xlogy(target_probs, target_probs) - target_probs * log_p).sum(dim=1)


def attack_loss(name: str, logits: Tensor, y: Tensor, target_probs: Tensor | None = None,
                kappa: float | None = None) -> Tensor:
    """The named objective; ``kappa`` caps the CW margin (the TRADES/RAT evaluation scripts'
    ``-relu(true - other + kappa)``, which equals ``min(margin, kappa)`` up to a constant)."""
    if name == "ce":
        return ce_loss(logits, y)
    if name == "cw":
        margin = cw_margin_loss(logits, y)
        return margin if kappa is None else margin.clamp(max=kappa)
    if name == "kl":
        if target_probs is None:
            raise ValueError("the 'kl' attack loss needs the clean probabilities")
        return kl_to_target(logits, target_probs)
    raise ValueError(f"unknown attack loss {name!r}; expected one of {LOSSES}")
