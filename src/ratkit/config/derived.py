"""Values derived from a configuration: the radii (asked of :mod:`ratkit.threat`), the data source,
the attack's precision on a device, the method's constructor arguments and its label. Each imports
what it needs when called, so that the configuration imports no torch."""

from __future__ import annotations

import dataclasses

from ..choices import AUTO
from .schema import Config


def resolved_attack(cfg: Config) -> tuple[float, float]:
    """(eps, step_size) of the training attack: :func:`ratkit.threat.train_radius`."""
    from ..threat import train_radius

    return train_radius(cfg)


def evaluation_eps(cfg: Config) -> float:
    """The eps of validation and of the final evaluation: :func:`ratkit.threat.evaluation_eps`."""
    from ..threat import evaluation_eps as radius

    return radius(cfg)


def protocol_eps(cfg: Config) -> float:
    """The run's threat radius for its norm: :func:`ratkit.threat.run_eps`."""
    from ..threat import run_eps

    return run_eps(cfg)


def data_source(cfg: Config):
    """The run's data as a :class:`ratkit.data.source.DataSource`: what every command needs to read
    the same data and normalise it identically.

    Example: ``source_info(data_source(load_config("fmnist-cpu"))).num_classes`` is 10."""
    from ..data.source import DataSource

    return DataSource.from_config(cfg.data)


def attack_precision(cfg: Config) -> str:
    """The training attack's precision with ``auto`` resolved for the run's device (a run resolves
    it once, when it starts, and records it: :func:`with_resolved_precision`)."""
    from ..device import resolve_device, resolve_precision

    if cfg.attack.precision != AUTO:
        return cfg.attack.precision
    try:
        device = resolve_device(cfg.train.device)
    except ValueError:  # an unavailable device is refused where the run starts; here any choice builds
        return "float32"
    return resolve_precision(AUTO, device)[0]


def with_resolved_precision(cfg: Config, device) -> tuple[Config, str]:
    """``cfg`` with ``attack.precision: auto`` replaced by what ``device`` computes natively, and the
    line that says what was chosen and why (an explicit bfloat16 on a device that only emulates it
    keeps bfloat16, and the line warns how much slower it is expected to be)."""
    from ..device import emulates_bfloat16, resolve_precision

    precision, why = resolve_precision(cfg.attack.precision, device)
    line = ("warning: " if emulates_bfloat16(precision, device) else "") + f"training attack precision: {why}"
    return dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, precision=precision)), line


def method_settings(cfg: Config) -> dict:
    """The configured method as ``compose_method``'s arguments: ``compose_method(**method_settings(cfg))``."""
    m, a = cfg.method, cfg.attack
    eps, step_size = resolved_attack(cfg)
    return dict(name=m.name, eps=eps, steps=a.steps, step_size=step_size, norm=a.norm, precision=attack_precision(cfg),
                beta=m.beta, rat=None if m.rat is None else dict(m.rat), awp=None if m.awp is None else dict(m.awp))


def method_label(cfg: Config) -> str:
    """Short name of the training method, e.g. ``awp-rat-trades``; used in run directory names."""
    parts = []
    if cfg.method.awp is not None:
        parts.append("awp")
    if cfg.method.rat is not None:
        labels = {"exact-head": "rat-exact", "trh": "rat-trh", "adv-trace": "rat-adv-trace"}
        parts.append(labels.get(cfg.method.rat.get("taylor"), "rat"))
    parts.append(cfg.method.name)
    return "-".join(parts)

