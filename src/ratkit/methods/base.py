"""What every training method is: how to craft the adversarial batch, and what loss to minimise.

A base method (AT, TRADES, MART) answers both questions in a few lines. Wrappers compose:
``RAT(TRADES())`` changes the attack model and adds loss terms, ``AWP(method)`` changes the
weights around the update. Every method also has ``step``, one optimisation step, which
the trainer and ``rat bench`` call and AWP overrides.

The step owns its precision (:class:`StepPrecision`, ``train.precision``): the attack's and the
loss's forward passes run under autocast, the backward and the optimizer step outside it (with a
gradient scaler in float16), and every loss term from float32 logits. So the trainer and the
benchmark run one and the same step.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..attacks import BatchShard, PGDConfig, pgd
from ..choices import STEP_PRECISIONS
from ..distributed import any_rank, unwrap
from ..modes import model_mode


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the step was not applied."""


class InvalidSetting(ValueError):
    """A method refused one of its settings; ``method`` and ``setting`` name it (``"RAT"``,
    ``"alpha"``) and ``rule`` says why, so that the config can name its own field."""

    def __init__(self, method: str, setting: str, rule: str) -> None:
        super().__init__(f"{method}.{setting} {rule}")
        self.method, self.setting, self.rule = method, setting, rule


@dataclass
class StepPrecision:
    """The precision of a whole training step: attack, loss and backward.

    "float32" (default) is no autocast and no scaler: the step is exactly the step without a
    StepPrecision. "bfloat16" and "float16" run the forward passes of the attack and of the loss
    under ``torch.autocast(device_type, dtype)`` (an attack whose ``PGDConfig.precision`` is
    "bfloat16" stays in bf16); the loss terms see float32 logits (:func:`forward_outputs`) and
    RAT's statistics run with autocast off. float16's narrow exponent range would flush small
    gradients to zero, so its backward is scaled (``torch.amp.GradScaler``): a step whose scaled
    gradients overflow is skipped and the scale lowered, which is not an error (the non-finite
    check looks at the unscaled loss). The scaler's state is part of a run's ``last`` checkpoint.

    Example::

        precision = StepPrecision("bfloat16", "cuda")
        method.step(model, optimizer, x, y, precision=precision)
    """

    name: str = "float32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in STEP_PRECISIONS:
            raise ValueError(f"step precision {self.name!r} is not one of {STEP_PRECISIONS}")
        if self.name == "float16":
            self.scaler = torch.amp.GradScaler(self.device_type)

    def autocast(self, device_type: str):
        """The context of a step's forward passes on ``device_type`` (the batch's; nothing in float32)."""
        if self.name == "float32":
            return nullcontext()
        if device_type != self.device_type:  # autocast on another device type would silently do nothing
            raise ValueError(f"a {self.name} StepPrecision for {self.device_type} got a batch on {device_type}")
        return torch.autocast(device_type, dtype=getattr(torch, self.name))

    def backward_and_step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; in float16 through the scaler, which skips a step whose
        gradients overflowed."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        """The scaler's state (JSON-able numbers; empty without a scaler), saved with ``last``."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def full_precision(t: Tensor) -> Tensor:
    """``t`` in float32 if autocast made it float16 or bfloat16, else ``t`` itself."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def float32_terms(device_type: str):
    """Autocast off: loss terms and statistics computed in float32 under any step precision."""
    if device_type == "meta":  # shape-only tensors: autocast knows no such device
        return nullcontext()
    return torch.autocast(device_type, enabled=False)


@dataclass
class Outputs:
    """Train-mode forward results, computed once per step and shared by every loss term; float32
    whatever the step's precision."""

    y: Tensor
    feats_adv: Tensor
    logits_adv: Tensor
    feats_clean: Tensor | None = None
    logits_clean: Tensor | None = None


@dataclass
class LossOutput:
    """The total loss, its weighted terms (for logging) and the outputs they came from."""

    loss: Tensor
    terms: dict[str, Tensor]
    outputs: Outputs


def forward_outputs(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, with_clean: bool,
                    clean_grad: bool = True) -> Outputs:
    """Clean (if needed) then adversarial forward in train mode, features and logits from one
    pass each (through ``forward``, so a DistributedDataParallel wrapper sees both passes).
    ``clean_grad=False``: no loss term differentiates the clean pass (RAT-AT's statistics), so
    it runs without a graph: the same values, less memory, no backward through it.
    Under autocast the results are cast to float32 (otherwise they are returned as they are)."""
    with model_mode(model, True):
        feats_clean = logits_clean = None
        if with_clean:
            with torch.set_grad_enabled(clean_grad and torch.is_grad_enabled()):
                feats_clean, logits_clean = map(full_precision, model(x, with_features=True))
        feats_adv, logits_adv = map(full_precision, model(x_adv, with_features=True))
    return Outputs(y=y, feats_adv=feats_adv, logits_adv=logits_adv,
                   feats_clean=feats_clean, logits_clean=logits_clean)


class Method:
    """Interface of every method (base or wrapper)."""

    def craft(self, model: nn.Module, x: Tensor, y: Tensor, *, generator: torch.Generator | None = None,
              shard: BatchShard | None = None) -> Tensor:
        """Adversarial examples for (x, y); ``shard`` says which rows of a global batch x is."""
        raise NotImplementedError

    def loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> LossOutput:
        raise NotImplementedError

    def objective(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        """The loss an adversarial *weight* perturbation (AWP) maximises; by default the method's loss."""
        return self.loss(model, x, x_adv, y).loss

    def update(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, x_adv: Tensor,
               y: Tensor, precision: StepPrecision | None = None) -> LossOutput:
        """Loss (its forward in ``precision``), backward and optimizer step on a crafted batch; a
        non-finite loss is never applied."""
        precision = precision or StepPrecision()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(x.device.type):
            out = self.loss(model, x, x_adv, y)
        if any_rank(not torch.isfinite(out.loss).item(), out.loss.device):  # every rank stops, or none
            raise NonFiniteLossError(f"non-finite loss {out.loss.item()} ({describe_terms(out.terms)})")
        precision.backward_and_step(out.loss, optimizer)
        return out

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
             generator: torch.Generator | None = None, epoch: int = 0, shard: BatchShard | None = None,
             precision: StepPrecision | None = None) -> LossOutput:
        """One training step: craft, then update, in ``precision`` (default float32)."""
        precision = precision or StepPrecision()
        with precision.autocast(x.device.type):
            x_adv = self.craft(model, x, y, generator=generator, shard=shard)
        return self.update(model, optimizer, x, x_adv, y, precision)


def describe_terms(terms: Mapping[str, Tensor]) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())


@dataclass
class BaseMethod(Method):
    """A base method: an attack (through the one engine) plus loss terms on shared outputs.

    ``primary_term`` names the classification term that RAT scales by (1 - alpha);
    ``needs_clean`` says whether the terms use the clean logits; ``labels_clean`` whether a
    term fits the clean output to the labels (TRADES' clean cross-entropy), which decides
    whether RAT's clean-output terms are safe (``RAT.clean_terms="auto"``).
    ``attack_objective`` and ``attack_start`` are the recipe of the method's training attack
    (its paper's attack loss and random start), which ``training_attack`` and ``from_settings``
    apply to any threat model. ``awp_gamma`` is the AWP perturbation size the AWP authors
    use with this base, the default of ``AWP(gamma=None)`` around it.
    """

    attack: PGDConfig = field(default_factory=lambda: train_attack(8 / 255))
    needs_clean: ClassVar[bool] = True
    labels_clean: ClassVar[bool] = False
    primary_term: ClassVar[str] = ""
    attack_objective: ClassVar[str] = "ce"
    attack_start: ClassVar[str] = "uniform"
    awp_gamma: ClassVar[float] = 5e-3  # AWP's default gamma on this base (AWP's authors: 5e-3 TRADES, 1e-2 PGD-AT)

    @classmethod
    def training_attack(cls, eps: float, steps: int = 10, step_size: float | None = None, norm: str = "Linf",
                        precision: str = "float32") -> PGDConfig:
        """This method's training attack for a threat model: ``MART.training_attack(8 / 255)``."""
        return train_attack(eps, steps, step_size, norm, loss=cls.attack_objective, random_start=cls.attack_start,
                            precision=precision)

    @classmethod
    def from_settings(cls, eps: float, steps: int = 10, step_size: float | None = None, norm: str = "Linf",
                      precision: str = "float32", **hyperparameters) -> BaseMethod:
        """The method with its training attack and those ``hyperparameters`` it has as fields (the
        others are left out: a config's ``beta`` means nothing to AT).

        Example: ``TRADES.from_settings(8 / 255, steps=10, beta=6.0)``"""
        own = {f.name for f in dataclasses.fields(cls)} - {"attack"}
        return cls(attack=cls.training_attack(eps, steps, step_size, norm, precision),
                   **{k: v for k, v in hyperparameters.items() if k in own})

    def craft(self, model, x, y, *, generator=None, shard=None, params: Mapping[str, Tensor] | None = None):
        return pgd(unwrap(model), x, y, self.attack, params=params, generator=generator, shard=shard)

    def terms(self, out: Outputs) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, model, x, x_adv, y) -> LossOutput:
        out = forward_outputs(model, x, x_adv, y, with_clean=self.needs_clean)
        with float32_terms(y.device.type):
            terms = self.terms(out)
        return LossOutput(loss=sum(terms.values()), terms=terms, outputs=out)


def train_attack(eps: float, steps: int = 10, step_size: float | None = None, norm: str = "Linf",
                 loss: str = "ce", random_start: str = "uniform", precision: str = "float32") -> PGDConfig:
    """A training attack; the published CIFAR recipe is eps 8/255, 10 steps of 2/255 (= eps/4)."""
    return PGDConfig(eps=eps, step_size=eps / 4 if step_size is None else step_size, steps=steps, norm=norm,
                     loss=loss, random_start=random_start, precision=precision)
