"""The names a configuration chooses among, as plain tables without torch: norms, precisions,
compile settings, the evaluation protocols' attacks (with their titles), and TRADES' default beta.
The configuration reads and checks names here without importing the code behind them; that code
(attacks/, compile.py, device.py, methods/) imports its names from here, so each is written once.
"""

from __future__ import annotations

NORMS = ("Linf", "L2")
# the training attack's precisions (attack.precision); a whole training step's (train.precision)
PRECISIONS = ("float32", "bfloat16")
STEP_PRECISIONS = ("float32", "bfloat16", "float16")
# attack.precision and train.device: "auto" is resolved per device (ratkit.device)
AUTO = "auto"
COMPILE_CHOICES = ("auto", "true", "false")  # train.compile, eval.compile (ratkit.compile)
TRADES_BETA = 6.0  # the weight of TRADES' robust term (Zhang et al.), and method.beta's default

# The evaluation protocols, one table each: attack name -> the report's title, in report order.
# How each attack runs is ratkit.attacks.protocols.PROTOCOL_ATTACKS, built on these names.
PROTOCOL_TITLES: dict[str, dict[str, str]] = {
    "ours": {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20 (CE)", "cw30": "CW-30 (margin)",
             "aa": "AutoAttack (standard)"},
    "paper": {"clean": "clean", "pgd20": "PGD-20 (CE)", "cw20": "CW-20 (margin)", "aa": "AutoAttack (standard)"},
}
PROTOCOLS = tuple(PROTOCOL_TITLES)
DEFAULT_ATTACKS = {name: tuple(table) for name, table in PROTOCOL_TITLES.items()}
ATTACKS = DEFAULT_ATTACKS["ours"]  # our protocol's
ATTACK_TITLES = {name: title for table in PROTOCOL_TITLES.values() for name, title in table.items()}


def parse_attacks(text: str, protocol: str = "ours") -> tuple[str, ...]:
    """Parse 'clean,pgd20,aa' into protocol order; names outside the protocol raise ValueError."""
    allowed = DEFAULT_ATTACKS[protocol]
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown attack(s) {unknown or text!r} for the {protocol!r} protocol; "
                         f"choose from {','.join(allowed)}")
    return tuple(n for n in allowed if n in names)
