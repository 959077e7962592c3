"""Loss landscapes along random, filter-normalised directions in weight space.

What is measured: the mean cross-entropy and the accuracy of the model with weights
``w + a * d1`` (1-D) or ``w + a * d1 + b * d2`` (2-D) on a fixed set of examples, for ``a`` and
``b`` on a grid in ``[-span, span]``. A flat curve around ``a = 0`` is what "flat minimum"
means in the robust-overfitting literature (AWP, RAT).

Directions follow Li et al. (2018), "Visualizing the Loss Landscape of Neural Nets": a
Gaussian draw, then every filter (slice along dim 0: a conv output channel, a row of a linear
layer) is rescaled to the norm of the same filter of the weights, so that the scale
invariance of ReLU networks does not make one network look flatter than another. Parameters
with dim <= 1 (biases, BatchNorm weight and bias) get a zero direction by default
(``bias_bn="zero"``, Li et al.'s ``ignore='biasbn'``): they are few, and a BatchNorm scale moved
by a fraction of itself says little about flatness; ``bias_bn="weights"`` uses the weights
themselves as the direction, as Li et al.'s code does otherwise. Buffers (BatchNorm running
statistics) are never perturbed, and the model runs in eval mode.

The draw comes from a CPU ``torch.Generator`` seeded by ``seed``, one parameter after another in
``named_parameters()`` order, so two checkpoints of the same architecture get the same raw
draw (on any device) and only the filter norms differ.

Adversarial curves, two variants, named by what is held fixed:

* ``adversarial="regenerated"`` (the AWP paper's): at every grid point the attack is run
  again against the perturbed weights; this is the robust loss of the perturbed model.
* ``adversarial="fixed"``: the attack is crafted once at the trained weights and the same
  adversarial batch is evaluated at every grid point; cheaper, and it isolates how the loss
  of *these* inputs changes with the weights.

Both use a fresh attack generator seeded by ``seed`` at each grid point (common random
numbers), so at the origin the two variants give the same number.

The live parameters are never written: every grid point runs the model through
``torch.func.functional_call`` on perturbed copies (:func:`ratkit.weights.forward_with`).
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..attacks import PGDConfig
from ..modes import model_mode
from .common import adversarial_examples, check_batch_size, loss_and_accuracy, prepare_examples, resolve_attack

ADVERSARIAL = ("none", "fixed", "regenerated")
BIAS_BN = ("zero", "weights")

Direction = dict[str, Tensor]


@dataclass
class LandscapeSettings:
    """How a landscape was measured (enough to repeat it)."""

    dim: int
    points: int
    span: float
    seed: int
    adversarial: str
    attack: dict | None
    n: int
    batch_size: int
    bias_bn: str
    directions: str = "gaussian, filter-normalised (Li et al. 2018)"


@dataclass
class LandscapeResult:
    """Loss and accuracy on the grid; in 2-D ``grid[i][j]`` is at ``(coordinates[i], coordinates[j])``
    along (direction 1, direction 2). Adversarial grids are None when ``adversarial="none"``."""

    coordinates: list[float]
    clean_loss: list
    clean_accuracy: list
    adversarial_loss: list | None
    adversarial_accuracy: list | None
    settings: LandscapeSettings
    label: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def grid_coordinates(points: int, span: float) -> list[float]:
    """``points`` evenly spaced values in [-span, span]; an odd count puts exactly 0.0 in the middle."""
    if points < 2:
        return [0.0]
    return [span * (2 * i - (points - 1)) / (points - 1) for i in range(points)]


def random_direction(model: nn.Module, generator: torch.Generator) -> Direction:
    """A raw N(0, 1) draw for every parameter, drawn on the CPU so any device gets the same values."""
    out = {}
    for name, p in model.named_parameters():
        draw = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        out[name] = draw.to(device=p.device, dtype=p.dtype)
    return out


def filter_normalize(direction: Mapping[str, Tensor], params: Mapping[str, Tensor], bias_bn: str = "zero") -> Direction:
    """Rescale every filter of ``direction`` to the norm of the same filter of ``params``."""
    if bias_bn not in BIAS_BN:
        raise ValueError(f"bias_bn: {bias_bn!r} is not one of {BIAS_BN}")
    out = {}
    for name, d in direction.items():
        w = params[name].detach()
        if w.dim() <= 1:
            out[name] = torch.zeros_like(w) if bias_bn == "zero" else w.clone()
            continue
        shape = (-1,) + (1,) * (w.dim() - 1)
        scale = w.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
        out[name] = d * scale.view(shape)
    return out


def filter_normalized_directions(model: nn.Module, count: int, seed: int, bias_bn: str = "zero") -> list[Direction]:
    """``count`` directions from one generator seeded by ``seed`` (the 2-D plane uses the first two)."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return [filter_normalize(random_direction(model, generator), params, bias_bn) for _ in range(count)]


def perturbed_params(base: Mapping[str, Tensor], directions: Sequence[Direction], coords: Sequence[float]) -> Direction:
    """New tensors ``w + sum_k c_k d_k``; a zero coordinate adds nothing, so the origin is exactly ``w``."""
    out = {}
    for name, w in base.items():
        p = w.detach().clone()
        for d, c in zip(directions, coords):
            if c != 0.0:
                p.add_(d[name], alpha=c)
        out[name] = p
    return out


def check_landscape_settings(dim: int, points: int, span: float, adversarial: str, bias_bn: str = "zero",
                             batch_size: int = 256) -> None:
    """Refuse bad settings before any work is done, naming the setting."""
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be odd and >= 3 so the grid contains the trained weights, got {points}")
    if not span > 0:
        raise ValueError(f"span must be > 0, got {span}")
    if adversarial not in ADVERSARIAL:
        raise ValueError(f"adversarial: {adversarial!r} is not one of {ADVERSARIAL}")
    if bias_bn not in BIAS_BN:
        raise ValueError(f"bias_bn: {bias_bn!r} is not one of {BIAS_BN}")
    check_batch_size(batch_size)


def loss_landscape(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    dim: int = 1,
    points: int = 21,
    span: float = 1.0,
    adversarial: str = "none",
    eps: float | None = None,
    attack: PGDConfig | None = None,
    seed: int = 0,
    bias_bn: str = "zero",
    batch_size: int = 256,
    label: str = "",
    quiet: bool = False,
) -> LandscapeResult:
    """Clean (and adversarial) loss and accuracy of ``model`` on (x, y) along 1 or 2 random directions.

    ``adversarial`` is "none", "fixed" or "regenerated" (see the module docstring); the attack
    is ``attack`` if given, else :func:`~ratkit.analysis.common.default_attack` at ``eps``.
    The model's parameters, buffers and train/eval flags are as before when this returns or raises.

    Example::

        land = loss_landscape(ex.model, ex.x, ex.y, dim=1, points=21, span=1.0, adversarial="fixed", eps=ex.eps)
    """
    from tqdm.auto import tqdm

    check_landscape_settings(dim, points, span, adversarial, bias_bn, batch_size)
    cfg = resolve_attack(attack, eps) if adversarial != "none" else None
    x, y = prepare_examples(model, x, y)
    coords = grid_coordinates(points, span)
    shape = (points,) * dim
    clean_loss, clean_acc = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    adv_loss, adv_acc = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    started = time.perf_counter()
    grid = list(itertools.product(range(points), repeat=dim))
    disable = quiet or not sys.stderr.isatty()
    with model_mode(model, False), torch.autocast(x.device.type, enabled=False):
        directions = filter_normalized_directions(model, dim, seed, bias_bn)
        base = {name: p.detach() for name, p in model.named_parameters()}
        if adversarial == "fixed":
            x_fixed = adversarial_examples(model, x, y, cfg, seed=seed, batch_size=batch_size)
        with tqdm(total=len(grid), desc=f"landscape {label}".strip(), unit="pt", disable=disable, leave=False) as bar:
            for index in grid:
                params = perturbed_params(base, directions, [coords[i] for i in index])
                clean_loss[index], clean_acc[index] = loss_and_accuracy(model, x, y, params, batch_size)
                if adversarial != "none":
                    if adversarial == "regenerated":
                        x_adv = adversarial_examples(model, x, y, cfg, params=params, seed=seed, batch_size=batch_size)
                    else:
                        x_adv = x_fixed
                    adv_loss[index], adv_acc[index] = loss_and_accuracy(model, x_adv, y, params, batch_size)
                bar.update(1)
    has_adv = adversarial != "none"
    settings = LandscapeSettings(dim=dim, points=points, span=span, seed=seed, adversarial=adversarial,
                                 attack=asdict(cfg) if cfg is not None else None, n=len(x),
                                 batch_size=batch_size, bias_bn=bias_bn)
    return LandscapeResult(
        coordinates=coords,
        clean_loss=clean_loss.tolist(),
        clean_accuracy=clean_acc.tolist(),
        adversarial_loss=adv_loss.tolist() if has_adv else None,
        adversarial_accuracy=adv_acc.tolist() if has_adv else None,
        settings=settings,
        label=label,
        seconds=time.perf_counter() - started,
    )
