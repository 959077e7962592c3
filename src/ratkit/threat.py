"""The threat radius: from a run's config and its dataset's facts, the radius and step of training,
validation and evaluation, and every message about them.

Four settings say it. ``data.eps`` (``--eps``) is the run's radius, required for your own data;
null takes the built-in dataset's protocol eps for ``attack.norm``. ``attack.eps`` moves the
training attack alone, whose step is ``attack.step_size``, else eps/4. ``eval.eps`` moves the
final evaluation alone. ``train.val_eps`` is validation's, recorded when a run starts. Radii are
in [0, 1] pixel units: an L-infinity radius bounds each pixel's change, an L2 radius the
Euclidean norm of the whole perturbation. ``rat train``, ``rat eval``, ``ratkit.fit`` and the
analysis tools all ask here.

Example::

    threat(load_config("fmnist-cpu"))
    # Threat(norm='Linf', train_eps=0.1, train_step=0.04, val_eps=0.1, eval_eps=0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["STEP_FOLLOWS_EPS", "RadiusError", "Threat", "check_radii", "check_radius", "checkpoint_eps", "data_eps",
           "eps_line", "evaluation_eps", "method_at_radius", "no_radius", "run_eps", "threat", "train_radius",
           "validation_eps"]


class RadiusError(ValueError):
    """A radius that is missing or cannot be meant; one line naming the setting."""


@dataclass(frozen=True)
class Threat:
    """The radii of one run (and the training attack's step), all under ``norm``."""

    norm: str
    train_eps: float
    train_step: float
    val_eps: float
    eval_eps: float


def data_eps(dataset: str, eps: float | None, norm: str) -> float:
    """The run's radius under ``norm``: ``eps`` (``data.eps``, ``--eps``) if given, else the built-in
    dataset's protocol eps (Linf 8/255 CIFAR/SVHN, 0.1 (Fashion-)MNIST; L2 0.5); your own data has none."""
    from .data.datasets import DATASETS, dataset_info

    if eps is not None:
        return float(eps)
    if dataset not in DATASETS:
        raise no_radius(dataset)
    return dataset_info(dataset).protocol_eps(norm)


def no_radius(dataset: str) -> RadiusError:
    """The error of your own data given no radius: it has no protocol eps to fall back on."""
    from .data.info import no_radius_message

    return RadiusError(no_radius_message(dataset))


def check_radius(setting: str, eps: float | None, norm: str) -> None:
    """RadiusError for an L-infinity radius of 1 or more: on images in [0, 1] it reaches every image,
    so it was meant in /255 units (``--eps 8`` for 8/255). An L2 radius of 1 or more can be meant."""
    if eps is not None and norm == "Linf" and eps >= 1:
        raise RadiusError(f"{setting}: an L-infinity radius of {eps:g} reaches every image in [0, 1]; radii are in "
                          f"[0, 1] pixel units: {eps:g}/255 = {eps / 255:.4f}")


def check_radii(cfg) -> None:
    """RadiusError unless the config's radii can be meant: own data gives ``data.eps``, and no
    L-infinity radius is 1 or more."""
    for setting, eps in (("data.eps", cfg.data.eps), ("attack.eps", cfg.attack.eps), ("eval.eps", cfg.eval.eps),
                         ("train.val_eps", cfg.train.val_eps)):
        check_radius(setting, eps, cfg.attack.norm)
    try:
        data_eps(cfg.data.dataset, cfg.data.eps, cfg.attack.norm)
    except RadiusError as exc:
        raise RadiusError(f"data.eps: {exc}") from None


def run_eps(cfg) -> float:
    """The run's radius: ``data.eps``, else the built-in dataset's protocol eps for ``attack.norm``."""
    return data_eps(cfg.data.dataset, cfg.data.eps, cfg.attack.norm)


def train_radius(cfg) -> tuple[float, float]:
    """(eps, step) of the training attack: ``attack.eps``, else the run's radius; ``attack.step_size``,
    else eps / 4."""
    eps = float(cfg.attack.eps) if cfg.attack.eps is not None else run_eps(cfg)
    return eps, float(cfg.attack.step_size) if cfg.attack.step_size is not None else eps / 4


def evaluation_eps(cfg) -> float:
    """The final evaluation's radius: ``eval.eps``, else the run's radius, as ``rat eval`` takes it, so
    both report the same number for the same checkpoint; a training ``attack.eps`` does not move it."""
    return float(cfg.eval.eps) if cfg.eval.eps is not None else run_eps(cfg)


def validation_eps(cfg) -> float:
    """Validation's radius: ``train.val_eps`` (recorded when the run started), else the evaluation's."""
    return float(cfg.train.val_eps) if cfg.train.val_eps is not None else evaluation_eps(cfg)


def threat(cfg) -> Threat:
    """Every radius of the run ``cfg`` describes."""
    eps, step = train_radius(cfg)
    return Threat(norm=cfg.attack.norm, train_eps=eps, train_step=step, val_eps=validation_eps(cfg),
                  eval_eps=evaluation_eps(cfg))


def checkpoint_eps(src, norm: str, eps: float | None = None, meta: dict | None = None) -> float:
    """``rat eval``'s radius for a checkpoint whose data is ``src`` (a DataSource) and whose header is
    ``meta``: ``--eps``, else the radius the run recorded (``data.eps``), else the built-in dataset's
    protocol eps for ``norm``. A recorded radius is its run's norm's: under another one it is refused."""
    run_norm = ((meta or {}).get("config") or {}).get("attack", {}).get("norm")
    if eps is None and src.eps is not None and run_norm not in (None, norm):
        raise RadiusError(f"--norm {norm}: the run's radius {src.eps:g} (data.eps) is an {run_norm} radius; "
                          f"evaluate with --norm {run_norm}, or give the {norm} radius with --eps E")
    radius = data_eps(src.dataset, src.eps if eps is None else eps, norm)
    check_radius("--eps" if eps is not None else "the recorded data.eps", radius, norm)
    return radius


# the override a given radius brings on a new run: a preset's step was for its own eps, eps / 4 again
STEP_FOLLOWS_EPS = ("attack.step_size", None)


def eps_line(cfg) -> str:
    """Which radius validation and the final evaluation use, beside the training attack's when it differs."""
    t = threat(cfg)
    source = "eval.eps" if cfg.eval.eps is not None else "the protocol's, as rat eval"
    differs = f"; the training attack's is {t.train_eps:.4g}" if abs(t.train_eps - t.eval_eps) > 1e-12 else ""
    if abs(t.val_eps - t.eval_eps) > 1e-12:  # eval.eps changed on a resume: validation keeps the run's own
        return (f"validation at {t.norm} eps={t.val_eps:.4g} (train.val_eps, the run's own), "
                f"evaluation at eps={t.eval_eps:.4g} ({source}{differs})")
    return f"validation and evaluation at {t.norm} eps={t.eval_eps:.4g} ({source}{differs})"


def method_at_radius(method, eps: float, norm: str):
    """``method`` with its base's training attack at radius ``eps`` under ``norm``: a base given no
    attack (``RAT(TRADES())``, whose default is Linf 8/255) gets its own recipe built there; an
    attack given at another radius or norm is a RadiusError, since the run would say one radius
    and train at another."""
    from .methods import BaseMethod
    from .methods.awp import innermost

    base = innermost(method)
    if not isinstance(base, BaseMethod):
        return method
    attack = base.attack
    try:
        default = type(base)().attack
    except TypeError:  # a base of your own that needs arguments: its attack was given
        default = None
    if attack == default:  # the class's default: no attack was given
        rebuilt = replace(base, attack=type(base).training_attack(eps, attack.steps, norm=norm,
                                                                  precision=attack.precision))
        return _with_base(method, base, rebuilt)
    if attack.norm != norm or abs(attack.eps - eps) > 1e-12:
        name = type(base).__name__
        raise RadiusError(f"method: the {name} attack is {attack.norm} eps={attack.eps:.4g}, the run's radius "
                          f"{norm} eps={eps:.4g}; give {name}(attack={name}.training_attack({eps:.4g}, "
                          f"norm={norm!r})) or no attack")
    return method


def _with_base(method, base, rebuilt):
    """``method`` (a base, or wrappers around one) with ``base`` replaced by ``rebuilt``."""
    if method is base:
        return rebuilt
    key = "method" if getattr(method, "method", None) is not None else "base"
    return replace(method, **{key: _with_base(getattr(method, key), base, rebuilt)})
