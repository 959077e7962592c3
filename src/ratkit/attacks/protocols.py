"""The evaluation protocols as tables: which attacks each protocol runs, in report order, their
titles, and how each runs (the one PGD engine's settings). Every list of attack names, title and
accuracy key in ratkit derives from :data:`PROTOCOL_ATTACKS`; the configuration, the studies and
:mod:`ratkit.evaluate` read the names here, so none of them imports the evaluation to get them
(docs/extending.md, "Add an evaluation attack")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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

# The protocols, one table each, in report order.
PROTOCOL_ATTACKS: dict[str, dict[str, ProtocolAttack]] = {
    "ours": {
        "clean": ProtocolAttack("clean", kind="clean"),
        "fgsm": ProtocolAttack("FGSM", config=lambda eps, norm: fgsm_config(eps, norm), plotted=False),
        "pgd20": ProtocolAttack("PGD-20 (CE)", config=_ours_pgd(20, "ce")),
        "cw30": ProtocolAttack("CW-30 (margin)", config=_ours_pgd(30, "cw")),
        "aa": ProtocolAttack("AutoAttack (standard)", kind="autoattack"),
    },
    "paper": {
        "clean": ProtocolAttack("clean", kind="clean"),
        "pgd20": ProtocolAttack("PGD-20 (CE)", config=_paper_pgd("ce", None)),
        "cw20": ProtocolAttack("CW-20 (margin)", config=_paper_pgd("cw", PAPER_CW_KAPPA)),
        "aa": ProtocolAttack("AutoAttack (standard)", kind="autoattack"),
    },
}
PROTOCOLS = tuple(PROTOCOL_ATTACKS)
DEFAULT_ATTACKS = {name: tuple(table) for name, table in PROTOCOL_ATTACKS.items()}
ATTACKS = DEFAULT_ATTACKS["ours"]  # our protocol's
ATTACK_TITLES = {k: a.title for table in PROTOCOL_ATTACKS.values() for k, a in table.items()}
PAPER_EPS = 0.031  # the scripts' rounding of 8/255


def paper_eps(protocol_eps: float) -> float:
    """The papers' eps for a dataset whose eps in our protocol is ``protocol_eps``."""
    return PAPER_EPS if abs(protocol_eps - 8 / 255) < 1e-9 else protocol_eps


def paper_step(eps: float) -> float:
    """The scripts' PGD/CW step: 0.003 at eps 0.031, eps/10 otherwise."""
    return 0.003 if abs(eps - PAPER_EPS) < 1e-9 else eps / 10


def parse_attacks(text: str, protocol: str = "ours") -> tuple[str, ...]:
    """Parse 'clean,pgd20,aa' into protocol order; names outside the protocol raise ValueError."""
    allowed = DEFAULT_ATTACKS[protocol]
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown attack(s) {unknown or text!r} for the {protocol!r} protocol; "
                         f"choose from {','.join(allowed)}")
    return tuple(n for n in allowed if n in names)
