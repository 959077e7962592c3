"""The base methods by name, and the one function that composes a method from settings.

Adding a base method is one file in this folder and one entry in ``BASE_METHODS``
(docs/extending.md): the config's ``method.name`` choices, ``rat train`` and ``rat bench``
all read this dict.
"""

from __future__ import annotations

from .at import AT
from .awp import AWP
from .base import BaseMethod, Method
from .mart import MART
from .rat import RAT
from .trades import TRADES

BASE_METHODS: dict[str, type[BaseMethod]] = {"at": AT, "trades": TRADES, "mart": MART}


def compose_method(name: str, eps: float, *, steps: int = 10, step_size: float | None = None, norm: str = "Linf",
                   precision: str = "float32", rat: dict | None = None, awp: dict | None = None,
                   **hyperparameters) -> Method:
    """The base method ``name`` with its own training attack, wrapped as asked: AWP(RAT(base)).

    ``rat`` and ``awp``: None for no wrapper, else the wrapper's keyword arguments ({} takes its
    defaults). ``hyperparameters`` go to the base method, which keeps those it has (``beta``).
    Every setting is checked by the constructors; a bad one raises ``InvalidSetting`` (a ValueError).

    Example::

        method = compose_method("trades", 8 / 255, steps=10, beta=6.0, rat={"alpha": 0.2}, awp={"gamma": 5e-3})
        method.step(model, optimizer, x, y)
    """
    if name not in BASE_METHODS:
        raise ValueError(f"unknown base method {name!r}; expected one of {', '.join(BASE_METHODS)}")
    method = BASE_METHODS[name].from_settings(eps, steps, step_size, norm, precision, **hyperparameters)
    if rat is not None:
        method = RAT(method, **rat)
    if awp is not None:
        method = AWP(method, **awp)
    return method
