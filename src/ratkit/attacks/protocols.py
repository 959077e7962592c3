"""The evaluation protocols as tables: how each attack runs (the one PGD engine's settings). Their
attacks' names and titles, in report order, are :data:`ratkit.choices.PROTOCOL_TITLES`, which
:data:`PROTOCOL_ATTACKS` is built on; every list of attack names, title and accuracy key in ratkit
derives from them, and the configuration reads the names there without importing torch
(docs/extending.md, "Add an evaluation attack")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..choices import ATTACK_TITLES, ATTACKS, DEFAULT_ATTACKS, PROTOCOL_TITLES, PROTOCOLS, parse_attacks  # noqa: F401
from .pgd import PGDConfig, fgsm_config

# What an evaluation attack is: a title for the report, and how it runs. ``kind`` "clean" is the
# unattacked pass, "autoattack" the pyautoattack adapter, "pgd" the one attack engine with the
# settings ``config(eps, norm)`` returns; ``plotted``: shown in the studies' plots.
@dataclass(frozen=True)
class ProtocolAttack:
    title: str
    kind: str = "pgd"
    config: Callable[[float, str], PGDConfig] | None = None
    plotted: bool = True


def _ours_pgd(steps: int, loss: str) -> Callable[[float, str], PGDConfig]:
    return lambda eps, norm: PGDConfig(eps=eps, step_size=eps / 4, steps=steps, norm=norm, loss=loss, keep="best")


def _paper_pgd(loss: str, kappa: float | None) -> Callable[[float, str], PGDConfig]:
    return lambda eps, norm: PGDConfig(eps=eps, step_size=paper_step(eps), steps=20, norm=norm, loss=loss,
                                       kappa=kappa, random_start="uniform", keep="last")


PAPER_CW_KAPPA = 50.0

# How each attack of the protocols runs, by the names of ratkit.choices.PROTOCOL_TITLES.
_RUNS: dict[str, dict[str, dict]] = {
    "ours": {
        "clean": dict(kind="clean"),
        "fgsm": dict(config=lambda eps, norm: fgsm_config(eps, norm), plotted=False),
        "pgd20": dict(config=_ours_pgd(20, "ce")),
        "cw30": dict(config=_ours_pgd(30, "cw")),
        "aa": dict(kind="autoattack"),
    },
    "paper": {
        "clean": dict(kind="clean"),
        "pgd20": dict(config=_paper_pgd("ce", None)),
        "cw20": dict(config=_paper_pgd("cw", PAPER_CW_KAPPA)),
        "aa": dict(kind="autoattack"),
    },
}
# The protocols, one table each, in report order: attack name -> ProtocolAttack.
PROTOCOL_ATTACKS: dict[str, dict[str, ProtocolAttack]] = {
    protocol: {name: ProtocolAttack(title, **_RUNS[protocol][name]) for name, title in titles.items()}
    for protocol, titles in PROTOCOL_TITLES.items()
}
PAPER_EPS = 0.031  # the scripts' rounding of 8/255


def paper_eps(protocol_eps: float) -> float:
    """The papers' eps for a dataset whose eps in our protocol is ``protocol_eps``."""
    return PAPER_EPS if abs(protocol_eps - 8 / 255) < 1e-9 else protocol_eps


def paper_step(eps: float) -> float:
    """The scripts' PGD/CW step: 0.003 at eps 0.031, eps/10 otherwise."""
    return 0.003 if abs(eps - PAPER_EPS) < 1e-9 else eps / 10
