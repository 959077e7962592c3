"""What the landscape and the Hessian tools share.

* :func:`default_attack`: the attack both tools use unless told otherwise (PGD-10, Linf,
  step eps/4, uniform random start, cross-entropy), always through the one engine
  :func:`ratkit.attacks.pgd`.
* :func:`adversarial_examples`: craft a whole set of adversarial examples in batches, with a
  fresh generator seeded by ``seed``, so two calls with the same arguments give the same batch.
* :func:`loss_and_accuracy`: mean cross-entropy and accuracy over all examples, optionally
  with substituted weights (``params``), never touching the live parameters.
* :func:`load_checkpoint_examples`: a checkpoint, the first N test images of its dataset and
  the dataset's eps, which is what ``rat landscape`` and ``rat hessian`` start from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks import PGDConfig, pgd
from ..weights import forward_with


def default_attack(eps: float, norm: str = "Linf") -> PGDConfig:
    """PGD-10 with step eps/4, uniform random start and cross-entropy (the AWP paper's setting)."""
    return PGDConfig(eps=eps, step_size=eps / 4, steps=10, norm=norm, loss="ce", random_start="uniform")


def resolve_attack(attack: PGDConfig | None, eps: float | None) -> PGDConfig:
    """The caller's attack, else the default one at ``eps`` (which must then be given)."""
    if attack is not None:
        return attack
    if eps is None:
        raise ValueError("an adversarial measure needs eps (or a full PGDConfig as attack)")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return default_attack(eps)


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters to analyse") from None


def prepare_examples(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Examples on the model's device, images as float32; shapes checked once here."""
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"expected x of shape N x ... and y of shape N, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError("no examples given")
    device = model_device(model)
    return x.to(device=device, dtype=torch.float32), y.to(device=device, dtype=torch.long)


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def adversarial_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: PGDConfig,
    *,
    params: Mapping[str, Tensor] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Adversarial examples for ``model`` (run with ``params`` if given), crafted in batches.

    The generator is created here from ``seed``: the same call gives the same examples, which
    is what lets the regenerated landscape equal the fixed one at the origin. It lives on the CPU
    whatever the model's device, so a GPU draws the CPU's random starts.
    """
    check_batch_size(batch_size)
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(x)
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        out[sl] = pgd(model, x[sl], y[sl], attack, params=params, generator=generator)
    return out


@torch.no_grad()
def loss_and_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    params: Mapping[str, Tensor] | None = None,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all of (x, y), in batches, in the model's current mode."""
    check_batch_size(batch_size)
    forward = forward_with(model, params)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        logits = forward(xb)
        total += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    return total.item() / len(x), correct.item() / len(x)


@dataclass
class CheckpointExamples:
    """A loaded checkpoint with the examples and eps the analysis tools need."""

    model: nn.Module
    x: Tensor
    y: Tensor
    dataset: str
    eps: float
    meta: dict[str, Any]
    path: str


def load_checkpoint_examples(
    checkpoint: str | os.PathLike,
    n: int,
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    model_code=None,
) -> CheckpointExamples:
    """Load a checkpoint (model in eval mode) and the first ``n`` test images of its dataset.

    The dataset is the one recorded in the checkpoint (a file dataset with its recorded settings)
    unless ``dataset`` overrides it; eps is the run's threat radius (the dataset's Linf eps for a
    built-in). ``model_code``: see :func:`ratkit.checkpoints.load_model`. Raises
    ``CheckpointError``/``DataError`` with a one-line reason.

    Example::

        ex = load_checkpoint_examples("runs/my-run", n=256)   # ex.model, ex.x, ex.y, ex.eps
    """
    from ..checkpoints import check_model_fits_data, checkpoint_path, load_model, recorded_data
    from ..data.source import load_split, source_info
    from ..threat import data_eps

    if n < 1:
        raise ValueError(f"n must be a positive number of images, got {n}")
    model, meta = load_model(checkpoint, device, model_code)
    src = recorded_data(meta, dataset=dataset, data_dir=None if data_dir is None else str(data_dir))
    info = source_info(src)
    check_model_fits_data(meta, info, str(checkpoint_path(checkpoint)), src.dataset, model)
    test = load_split(src, "test", stream=False).first(n)
    tx = test.as_float().x if hasattr(test, "as_float") else test.x
    # clone: a slice would keep the whole test set alive
    x, y = prepare_examples(model, tx.clone(), test.y.clone())
    return CheckpointExamples(model=model, x=x, y=y, dataset=info.name, eps=data_eps(src.dataset, src.eps, "Linf"),
                              meta=meta, path=str(checkpoint_path(checkpoint)))
