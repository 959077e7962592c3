"""AWP, Adversarial Weight Perturbation (Wu et al., NeurIPS 2020), around any method's step.

Per step: craft x_adv with the wrapped method; take the gradient g of the method's objective
(``Method.objective``) with respect to every weight tensor (dim > 1) in train mode; perturb
each such weight by v = gamma * ||w|| * g / ||g|| (what the authors' one-step proxy optimiser
computes, since its learning rate cancels in the normalisation); compute the method's loss
on the perturbed weights, step the optimizer, and remove v again, in a ``finally``.

No proxy copy of the model is made; the objective's forward may move BatchNorm running
statistics, so they are saved and restored around it (the authors' proxy model leaves the
live statistics alone, and so do we).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..distributed import any_rank, average, unwrap
from .base import BaseMethod, InvalidSetting, LossOutput, Method, NonFiniteLossError, StepPrecision

_EPS = 1e-20


@contextmanager
def buffers_preserved(model: nn.Module):
    """Restore every buffer (e.g. BN running statistics) to its value on entry."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def perturbed_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights AWP perturbs: every parameter with more than one dimension (conv kernels,
    linear matrices), chosen by shape, never by name; biases and BN affine terms stay put."""
    return [p for p in model.parameters() if p.dim() > 1 and p.requires_grad]


def innermost(method: Method) -> Method:
    """The base method inside wrappers: ``innermost(AWP(RAT(AT())))`` is the ``AT()``."""
    while True:
        inner = getattr(method, "method", None) or getattr(method, "base", None)
        if not isinstance(inner, Method):
            return method
        method = inner


@dataclass
class AWP(Method):
    """AWP around ``method`` (any method, RAT included): ``gamma`` is the perturbation's size
    relative to each weight's norm, by default the one AWP's authors use with the base method
    inside (``BaseMethod.awp_gamma``: 5e-3 TRADES and MART, 1e-2 PGD-AT).

    ``warmup`` counts epochs from 1, as the authors' scripts do (``for epoch in range(1, epochs
    + 1)``, AWP from ``epoch >= awp_warmup``): AWP perturbs from the ``warmup``-th epoch on, so
    warmup 10 leaves the first 9 epochs unperturbed, and 0 or 1 perturbs from the first.
    ``step``'s ``epoch`` is the trainer's 0-based index.

    Example::

        method = AWP(RAT(TRADES()))  # gamma 5e-3; AWP(AT()) takes 1e-2
        method.step(model, optimizer, x, y, epoch=epoch)
    """

    method: Method = field(default=None)  # type: ignore[assignment]
    gamma: float | None = None
    warmup: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.method, Method):
            raise TypeError(f"AWP wraps a method, got {type(self.method).__name__}")
        if self.gamma is None:
            self.gamma = getattr(innermost(self.method), "awp_gamma", BaseMethod.awp_gamma)
        if self.gamma < 0:
            raise InvalidSetting("AWP", "gamma", f"must be >= 0, got {self.gamma}")
        if self.warmup < 0:
            raise InvalidSetting("AWP", "warmup", f"must be >= 0 (epochs), got {self.warmup}")

    def craft(self, model, x, y, *, generator=None, shard=None):
        return self.method.craft(model, x, y, generator=generator, shard=shard)

    def loss(self, model, x, x_adv, y) -> LossOutput:
        return self.method.loss(model, x, x_adv, y)

    def objective(self, model, x, x_adv, y):
        return self.method.objective(model, x, x_adv, y)

    def perturbation(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> list[Tensor]:
        """v for each weight in ``perturbed_weights(model)`` order; the live weights are not changed.

        Under data parallelism the objective's gradient is averaged over the ranks (the gradient
        of the global batch), so every rank applies the single-process perturbation."""
        net = unwrap(model)  # a gradient for the perturbation, not a training step: no DDP hooks
        weights = perturbed_weights(net)
        with buffers_preserved(net), torch.enable_grad():
            objective = self.method.objective(net, x, x_adv, y)
            if any_rank(not torch.isfinite(objective).item(), objective.device):
                raise NonFiniteLossError(f"non-finite AWP objective {objective.item()}; weights left unchanged")
            grads = torch.autograd.grad(objective, weights, allow_unused=True)
        grads = [None if g is None else average(g) for g in grads]
        return [torch.zeros_like(w) if g is None else
                self.gamma * w.detach().norm() / (g.norm() + _EPS) * g
                for w, g in zip(weights, grads)]

    def step(self, model, optimizer, x, y, *, generator=None, epoch: int = 0, shard=None,
             precision: StepPrecision | None = None) -> LossOutput:
        precision = precision or StepPrecision()
        with precision.autocast(x.device.type):
            x_adv = self.craft(model, x, y, generator=generator, shard=shard)
        if epoch + 1 < self.warmup or self.gamma == 0:  # epoch + 1: the authors' epoch, counted from 1
            return self.method.update(model, optimizer, x, x_adv, y, precision)
        weights = perturbed_weights(model)
        with precision.autocast(x.device.type):  # float16 too without a scaler: only the gradient's direction is used
            diffs = self.perturbation(model, x, x_adv, y)
        with torch.no_grad():
            for w, v in zip(weights, diffs):
                w.add_(v)
        try:
            return self.method.update(model, optimizer, x, x_adv, y, precision)
        finally:
            with torch.no_grad():
                for w, v in zip(weights, diffs):
                    w.sub_(v)
