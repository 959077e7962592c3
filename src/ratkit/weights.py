"""Substitute weights without touching the live parameters.

RAT crafts its attack on a noisy copy of the model; instead of deep-copying the network we
run it with ``torch.func.functional_call`` on a dict of (noisy) tensors. The live
``nn.Parameter`` objects are never written to here.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

Forward = Callable[[Tensor], Tensor]


def forward_with(model: nn.Module, params: Mapping[str, Tensor] | None = None) -> Forward:
    """Return ``x -> logits`` for ``model``, using ``params`` in place of its parameters if given.

    ``params`` may hold only some parameters (e.g. the noised conv weights); the rest are
    taken from the model as they are.
    """
    if params is None:
        return model
    overrides = dict(params)

    def forward(x: Tensor) -> Tensor:
        return functional_call(model, overrides, (x,), strict=False)

    return forward


def gaussian_noisy_params(
    model: nn.Module,
    names: list[str],
    sigma: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Detached copies of the named parameters plus N(0, sigma^2) noise (absolute sigma).

    The copies are detached (the attack differentiates with respect to the input only) and keep
    the parameters' memory layout, so a channels_last model is not re-laid-out at every forward.
    """
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no parameters named {missing} in {type(model).__name__}")
    noisy = {}
    for name in names:
        p = params[name].detach()
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype,
                            device=generator.device if generator is not None else p.device)
        copy = p.clone(memory_format=torch.preserve_format)  # keep the layout (e.g. channels_last)
        copy += sigma * noise.to(p.device)
        noisy[name] = copy
    return noisy
