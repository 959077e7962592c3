"""Reference-style TRADES and RAT-TRADES steps: the baseline `rat bench` measures against.

Written by us, to the same maths as ``ratkit.methods`` (TRADES, RAT(TRADES)), but in the
style of the published scripts, so that the speed-up of the library is measured and not
asserted:

* TRADES as in Zhang et al.'s script: the clean prediction ``model(x)`` is recomputed in
  every attack step, and the loss runs ``model(x)`` twice (once for the cross-entropy, once
  inside the KL term).
* RAT-TRADES as in Jin et al.'s script: a ``copy.deepcopy`` of the model per batch with
  Gaussian noise added to its conv weights, the TRADES attack above on that copy, two extra
  forward + backward passes for the head gradients (``autograd.grad`` with respect to the
  head weight on the clean and on the adversarial batch), and a fresh forward for every
  term of the loss.

Everything random is drawn from the caller's generator in the same order as the library
(the conv-weight noise in module order, then the attack's start), so on a fixed batch both
give the same loss (``tests/test_bench.py``). Two places differ on purpose and cannot
matter on inputs inside [0.01, 0.99]: the script does not clip the random start to [0, 1],
and it divides by zero when all gaps tie (here: uniform spreading, as in the library).
This file does not import ``ratkit.methods``: it is an independent restatement.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def reference_trades_attack(model: nn.Module, x: torch.Tensor, *, eps: float, step_size: float, steps: int,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES' attack as in the original script: KL(p(x) || p(x_adv)), clean forward every step."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def naive_trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
                      steps: int, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Attack, then loss_natural + beta * loss_robust with every forward recomputed."""
    x_adv = reference_trades_attack(model, x, eps=eps, step_size=step_size, steps=steps, generator=generator)
    model.train()
    criterion_kl = nn.KLDivLoss(reduction="sum")
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    return loss_natural + beta * loss_robust


def _soft_targets(gap: torch.Tensor, keep: float) -> torch.Tensor:
    """The script's per-class table: keep on the diagonal, the rest in proportion to gap - min."""
    num_classes = gap.numel()
    v = gap - gap.min()
    table = torch.zeros(num_classes, num_classes, dtype=gap.dtype, device=gap.device)
    for k in range(num_classes):
        others = v.clone()
        others[k] = 0.0
        total = others.sum()
        row = others / total if total > 0 else torch.full_like(others, 1.0 / (num_classes - 1))
        row[k] = 0.0
        table[k] = (1 - keep) * row
        table[k, k] = keep
    return table.detach()


def _kl(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    criterion_kl = nn.KLDivLoss(reduction="sum")
    return criterion_kl(F.log_softmax(logits, dim=1), targets) / len(logits)


def naive_rat_trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
                          steps: int, beta: float, alpha: float, sigma: float, pairing: str = "fixed",
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' RAT-TRADES loss, written the way their script computes it."""
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for module in noisy.modules():
            if isinstance(module, nn.Conv2d):
                noise = torch.randn(module.weight.shape, generator=generator, dtype=module.weight.dtype)
                module.weight.add_(sigma * noise.to(module.weight.device))
    x_adv = reference_trades_attack(noisy, x, eps=eps, step_size=step_size, steps=steps, generator=generator)
    del noisy

    model.train()
    head = model.head.weight
    grad_nat = torch.autograd.grad(F.cross_entropy(model(x), y), head)[0]
    grad_adv = torch.autograd.grad(F.cross_entropy(model(x_adv), y), head)[0]
    s_nat, s_adv = grad_nat.sum(dim=1), grad_adv.sum(dim=1)
    keep = 2.0 / s_nat.numel()
    t1_nat, t1_adv = s_nat.abs(), s_adv.abs()
    t2_nat, t2_adv = s_nat * s_nat, s_adv * s_adv
    tl1_gap, tl1_gap_ = _soft_targets(t1_nat - t1_adv, keep)[y], _soft_targets(t1_adv - t1_nat, keep)[y]
    tl2_gap, tl2_gap_ = _soft_targets(t2_nat - t2_adv, keep)[y], _soft_targets(t2_adv - t2_nat, keep)[y]
    tl2_to_adv = tl2_gap if pairing == "fixed" else tl2_gap_

    criterion_kl = nn.KLDivLoss(reduction="sum")
    loss_natural = F.cross_entropy(model(x), y)
    loss_robust = (1.0 / len(x)) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    loss_t1 = 0.5 * (_kl(tl1_gap, model(x_adv)) + _kl(tl1_gap_, model(x)))
    loss_t2 = 0.5 * (_kl(tl2_to_adv, model(x_adv)) + _kl(tl2_gap_, model(x)))
    return (1 - alpha) * loss_natural + beta * loss_robust + alpha * loss_t1 + alpha / 2 * loss_t2


def naive_step(loss_fn, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               **kwargs) -> torch.Tensor:
    """One optimisation step with a naive loss: zero_grad, loss, backward, step."""
    optimizer.zero_grad()
    loss = loss_fn(model, x, y, **kwargs)
    loss.backward()
    optimizer.step()
    return loss.detach()
