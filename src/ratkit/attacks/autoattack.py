"""Adapter to the authors' AutoAttack package (``pyautoattack``), standard version only.

Our evaluation protocol needs per-example results (for the worst case over attacks) and a
progress bar; pyautoattack 0.2.0 returns the adversarial batch and its own predictions on it,
which are the verdicts we keep, chunk by chunk.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn

from ..modes import model_mode, parameters_frozen
from .pgd import NORMS


def fit_to_classes(attack, classes: int) -> None:
    """Standard AutoAttack on fewer than 10 classes (a user's own data): APGD-T and FAB-T target
    every other class (``classes - 1`` targets, not 9: there are no more), and below 4 classes,
    where the targeted DLR loss is undefined (it reads the 4th-largest logit), APGD-T is left out
    and APGD-CE, FAB-T and Square remain. Nothing changes for 10 classes or more (docs/method.md)."""
    if classes >= 10:
        return
    targets = max(1, classes - 1)
    attack.apgd_targeted.n_target_classes = targets
    attack.fab.n_target_classes = targets
    if classes < 4:
        attack.attacks_to_run = [a for a in attack.attacks_to_run if a != "apgd-t"]


def autoattack_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    batch_size: int = 250,
    seed: int = 0,
    progress=None,
    skip: Callable[[int], bool] | None = None,
    keep: Tensor | None = None,
    chunks=None,
) -> Tensor:
    """Per-example bool: still correctly classified after standard AutoAttack.

    Standard AutoAttack = APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000
    queries). The model runs in eval mode; ``progress`` (a tqdm bar or None) is advanced by
    the number of examples attacked. The parameters are frozen for the attack: FAB-T calls
    ``backward()``, which would otherwise compute the weights' gradients and leave them in each
    ``p.grad`` (measured: the verdicts and images are bitwise the same, about 6% faster). ``skip(k)`` true leaves chunk k to another rank (its
    entries stay False): pyautoattack re-seeds every attack per call, so a chunk's result does
    not depend on the chunks before it, and sharding by chunk is exact. ``keep`` (a tensor
    like x) receives AutoAttack's output. ``chunks`` (an :class:`~ratkit.evaluate.chunks.AttackChunks`)
    keeps each chunk's verdicts on disk and restores those an interrupted run finished.
    """
    from pyautoattack import AutoAttack  # imported lazily: it is only needed here

    if norm not in NORMS:
        raise ValueError(f"AutoAttack norm {norm!r}: expected {' or '.join(map(repr, NORMS))}")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    device = x.device
    correct = torch.zeros(len(x), dtype=torch.bool, device=device)
    with model_mode(model, False), parameters_frozen(model):
        attack = AutoAttack(model, eps=eps, norm=norm, version="standard", seed=seed,
                            device=device)
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1]) if len(x) else 10
        fit_to_classes(attack, classes)
        for k, start in enumerate(range(0, len(x), batch_size)):
            if skip is not None and skip(k):
                continue
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            stored = chunks.load(k, device, inputs=keep is not None) if chunks is not None else None
            if stored is not None:
                x_adv, verdict = stored.get("x_adv"), stored["correct"].bool()
            else:
                x_adv, y_adv = attack.run_standard_evaluation(xb, yb, batch_size=batch_size)
                # AutoAttack's own verdicts: classifying x_adv again, in another batch composition, moves
                # logits by ~1e-7 and can count a barely broken image as correct
                verdict = y_adv.to(device) == yb
                if chunks is not None:
                    chunks.save(k, {"correct": verdict.to(torch.uint8),
                                    **({"x_adv": x_adv} if keep is not None else {})})
            if keep is not None:
                keep[start:start + len(xb)] = x_adv.to(device)
            correct[start:start + len(xb)] = verdict
            if progress is not None:
                progress.update(len(xb))
    return correct
