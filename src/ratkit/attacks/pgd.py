"""The one attack engine: projected gradient ascent in pixel space.

Training (AT, TRADES, MART, RAT's noisy attack) and evaluation (FGSM, PGD-20, CW-30) all
call :func:`pgd` with different :class:`PGDConfig` values. The step and the projection are
separate small functions (as in MadryLab's ``robustness``); the loop is here and nowhere else.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from ..choices import NORMS, PRECISIONS
from ..modes import model_mode, parameters_frozen
from ..weights import forward_with
from .losses import LOSSES, attack_loss

STARTS = ("none", "uniform", "normal")
KEEP = ("last", "best")


@dataclass(frozen=True)
class PGDConfig:
    """Settings of one attack.

    random_start: "uniform" samples the eps-ball (L2: a point on its sphere), "normal" adds
    ``init_std * N(0, 1)`` as TRADES does, "none" starts at x.
    keep: "last" returns the last iterate (the usual training attack); "best" returns, per
    example, the strongest point seen (misclassified first, then highest loss) over all
    iterates, restarts and the clean input itself, so it is never weaker than x.
    train_mode: run the model in train mode during the attack (default eval).
    kappa: caps the "cw" margin at kappa (the papers' CW-20 uses 50); None = no cap.
    precision: "bfloat16" runs the attack's forward and backward under bf16 autocast (a
    training-time speed option, about 2x on CPUs with AVX512-BF16; measured in
    docs/performance.md); the loss and the iterates stay float32. Evaluation is always float32.
    "float32" runs the attack in the caller's precision: a training step under a lower
    ``train.precision`` (``methods.StepPrecision``) crafts in that precision.
    """

    eps: float
    step_size: float
    steps: int
    norm: str = "Linf"
    loss: str = "ce"
    random_start: str = "uniform"
    init_std: float = 0.001
    restarts: int = 1
    keep: str = "last"
    train_mode: bool = False
    precision: str = "float32"
    kappa: float | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"PGDConfig.norm: {self.norm!r} is not one of {NORMS}")
        if self.loss not in LOSSES:
            raise ValueError(f"PGDConfig.loss: {self.loss!r} is not one of {LOSSES}")
        if self.random_start not in STARTS:
            raise ValueError(f"PGDConfig.random_start: {self.random_start!r} is not one of {STARTS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"PGDConfig.precision: {self.precision!r} is not one of {PRECISIONS}")
        if self.keep not in KEEP:
            raise ValueError(f"PGDConfig.keep: {self.keep!r} is not one of {KEEP}")
        if self.eps < 0 or self.step_size < 0 or self.init_std < 0:
            raise ValueError("PGDConfig: eps, step_size and init_std must be >= 0")
        if self.steps < 0 or self.restarts < 1:
            raise ValueError("PGDConfig: steps must be >= 0 and restarts >= 1")


@dataclass(frozen=True)
class BatchShard:
    """``x`` is rows [start, stop) of a batch of ``total`` examples (one rank's part under
    data parallelism). Random starts are drawn for the whole batch and sliced, so a sharded
    batch gets exactly the starts of the unsharded one and the generator advances alike."""

    start: int
    stop: int
    total: int


def fgsm_config(eps: float, norm: str = "Linf") -> PGDConfig:
    """FGSM is the one-step, no-random-start case of PGD with step size eps."""
    return PGDConfig(eps=eps, step_size=eps, steps=1, norm=norm, random_start="none")


def _flat_norm(t: Tensor) -> Tensor:
    """Per-example L2 norm, broadcastable against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Project a perturbation onto the eps-ball (L2: rescale only if outside)."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def ascent_step(delta: Tensor, grad: Tensor, step_size: float, norm: str) -> Tensor:
    """Steepest ascent for the norm: the sign for Linf, the normalised gradient for L2."""
    if norm == "Linf":
        return delta + step_size * grad.sign()
    return delta + step_size * grad / _flat_norm(grad).clamp_min(1e-12)


def clip_to_image(x: Tensor, delta: Tensor) -> Tensor:
    """Return the part of ``delta`` that keeps x + delta in [0, 1]."""
    return (x + delta).clamp(0.0, 1.0) - x


def random_start(x: Tensor, cfg: PGDConfig, generator: torch.Generator | None,
                 shard: BatchShard | None = None) -> Tensor:
    """Initial perturbation, already projected and clipped (drawn for the whole batch if sharded)."""
    if cfg.random_start == "none" or cfg.eps == 0:
        return torch.zeros_like(x)
    device = generator.device if generator is not None else x.device
    shape = x.shape if shard is None else (shard.total, *x.shape[1:])

    def draw(sample) -> Tensor:
        t = sample(shape, generator=generator, device=device, dtype=x.dtype)
        return (t if shard is None else t[shard.start:shard.stop]).to(x.device)

    if cfg.random_start == "normal":
        delta = cfg.init_std * draw(torch.randn)
    elif cfg.norm == "Linf":
        delta = (2 * draw(torch.rand) - 1) * cfg.eps
    else:
        g = draw(torch.randn)
        delta = cfg.eps * g / _flat_norm(g).clamp_min(1e-12)
    return clip_to_image(x, project(delta, cfg.eps, cfg.norm))


def advance_generator(x: Tensor, cfg: PGDConfig, generator: torch.Generator | None) -> None:
    """Consume exactly the random numbers ``pgd(model, x, y, cfg, generator=generator)`` would:
    a rank that skips a batch another rank attacks stays in step with a single process."""
    if generator is not None:
        for _ in range(cfg.restarts):
            random_start(x, cfg, generator)


def _stronger(loss_new: Tensor, wrong_new: Tensor, loss_old: Tensor, wrong_old: Tensor) -> Tensor:
    """Per example: is the new point a stronger attack (misclassified first, then loss)?"""
    return (wrong_new & ~wrong_old) | ((wrong_new == wrong_old) & (loss_new > loss_old))


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: PGDConfig,
    *,
    params: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    target_probs: Tensor | None = None,
    shard: BatchShard | None = None,
) -> Tensor:
    """Craft adversarial examples for ``model`` (or ``model`` run with ``params``).

    Differentiates with respect to the input only: parameters never receive ``.grad`` (they
    are frozen for the attack, which also keeps them out of the autograd graph).
    The model's train/eval mode and gradient flags are set for the attack and restored afterwards.
    For the "kl" loss the clean probabilities are computed once (not in every step),
    unless the caller passes them as ``target_probs``. Returns a detached tensor.

    Example::

        cfg = PGDConfig(eps=8 / 255, step_size=2 / 255, steps=20)  # Linf, CE, uniform start
        x_adv = pgd(model, x, y, cfg, generator=torch.Generator().manual_seed(0))
    """
    network = forward_with(model, params)
    bf16 = cfg.precision == "bfloat16"

    def forward(z: Tensor) -> Tensor:
        # "float32" leaves the caller's autocast as it is: off in evaluation, a training step's precision
        with torch.autocast(device_type=z.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = network(z)
        return logits.float()

    x = x.detach()
    with model_mode(model, cfg.train_mode), parameters_frozen(model), torch.enable_grad():
        if cfg.loss == "kl" and target_probs is None:
            with torch.no_grad():
                target_probs = torch.softmax(forward(x), dim=1)

        def score(logits: Tensor) -> tuple[Tensor, Tensor]:
            loss = attack_loss(cfg.loss, logits, y, target_probs, cfg.kappa).detach()
            return loss, logits.argmax(dim=1) != y

        track = cfg.keep == "best" or cfg.restarts > 1
        best_x = x.clone()
        if track:
            with torch.no_grad():
                if cfg.keep == "best":
                    best_loss, best_wrong = score(forward(x))
                else:
                    best_loss = torch.full_like(y, float("-inf"), dtype=x.dtype)
                    best_wrong = torch.zeros_like(y, dtype=torch.bool)

        def keep_stronger(x_try: Tensor, loss: Tensor, wrong: Tensor) -> None:
            nonlocal best_loss, best_wrong
            better = _stronger(loss, wrong, best_loss, best_wrong)
            best_x[better] = x_try[better]
            best_loss = torch.where(better, loss, best_loss)
            best_wrong = torch.where(better, wrong, best_wrong)

        x_adv = x
        for _ in range(cfg.restarts):
            delta = random_start(x, cfg, generator, shard)
            for _ in range(cfg.steps):
                delta.requires_grad_(True)
                logits = forward(x + delta)
                loss = attack_loss(cfg.loss, logits, y, target_probs, cfg.kappa)
                (grad,) = torch.autograd.grad(loss.sum(), delta)
                delta = delta.detach()
                if cfg.keep == "best":
                    keep_stronger(x + delta, loss.detach(), logits.argmax(dim=1) != y)
                delta = ascent_step(delta, grad, cfg.step_size, cfg.norm)
                delta = clip_to_image(x, project(delta, cfg.eps, cfg.norm))
            x_adv = (x + delta).detach()
            if track:
                with torch.no_grad():
                    keep_stronger(x_adv, *score(forward(x_adv)))
    return best_x if track else x_adv
