"""Per-example attack objectives (higher = stronger attack); reduction is left to the caller.

Also home of the one KL divergence (``kl_to_target``) that the training losses share, since
attacks cannot import methods."""

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


KL_REDUCTIONS = ("none", "mean", "batchmean")


def kl_to_target(logits: Tensor, target_probs: Tensor, reduction: str = "none", *, log_eps: float | None = None,
                 probs: Tensor | None = None) -> Tensor:
    """KL(target || q), q = softmax(logits): the one KL of ratkit (TRADES' attack and loss, MART, RAT).

    ``reduction``: "none" gives the sum over classes per example; "mean" its batch mean (RAT's
    soft-target terms); "batchmean" the sum over everything divided by the batch size, computed
    by ``F.kl_div`` as in TRADES' authors' code. The same value, but not the same bits: F.kl_div
    builds its terms in another order, so its gradient differs from the others' in the last
    bits, and TRADES' loss stays the authors' to the bit only this way.
    ``log_eps``: log q is taken as ``log(q + log_eps)`` instead of ``log_softmax(logits)``
    (MART's authors' code, 1e-12); ``probs`` then passes q where the caller has it already, so
    that the loss's graph shares it (MART).

    Example: ``kl_to_target(model(x_adv), torch.softmax(model(x), 1), "batchmean")``
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; expected one of {KL_REDUCTIONS}")
    if probs is not None and log_eps is None:
        raise ValueError("kl_to_target: probs goes with log_eps (without it, log q is log_softmax(logits))")
    if log_eps is None:
        log_q = F.log_softmax(logits, dim=1)
    else:
        log_q = torch.log((F.softmax(logits, dim=1) if probs is None else probs) + log_eps)
    if reduction == "batchmean":
        return F.kl_div(log_q, target_probs, reduction="batchmean")
    per_example = (torch.xlogy(target_probs, target_probs) - target_probs * log_q).sum(dim=1)
    return per_example.mean() if reduction == "mean" else per_example


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
