"""The rules of a configuration, checked once at the edge (:func:`validate`): types again (strictly),
every range and choice, and the methods' own settings by building them. The names checked come
from :mod:`ratkit.choices`; the method classes are imported only here, where a method is built."""

from __future__ import annotations

import re
from typing import Any

from ..choices import AUTO, COMPILE_CHOICES, NORMS, PRECISIONS, STEP_PRECISIONS, parse_attacks
from .derived import method_settings
from .schema import SECTIONS, WRAPPER_KEYS, Config, ConfigError, _coerce, _field_types, _wrapper_settings, wrappers

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")


def _check(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: {rule}, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, name, f"must be one of {', '.join(choices)}", value)


def validate(cfg: Config) -> None:
    """Check types and every range/choice rule; raise ConfigError naming the first bad field.

    Types are re-checked here (strictly: no string-to-float coercion) so a Config built or
    edited in code gets the same clear message as one loaded from YAML.
    """
    if not isinstance(cfg, Config):
        raise ConfigError(f"config: expected a Config, got {type(cfg).__name__}")
    for sec in SECTIONS:
        obj = getattr(cfg, sec)
        if not isinstance(obj, SECTIONS[sec]):
            raise ConfigError(f"{sec}: expected {SECTIONS[sec].__name__}, got {type(obj).__name__}")
        for key, tp in _field_types(sec).items():
            _coerce(f"{sec}.{key}", getattr(obj, key), tp, strict=True)
    for rules in (_validate_data_and_model, _validate_attack_and_method, _validate_optim, _validate_train,
                  _validate_eval):
        rules(cfg)


def _validate_data_and_model(cfg: Config) -> None:
    from ..data import DATASETS
    from ..data.source import FILE_DATASETS, GIVEN, LABELS
    from ..models import model_spec
    from ..models.user import check_user_model_name, is_user_model
    from ..threat import RadiusError, check_radii

    d, m = cfg.data, cfg.model
    _choice("data.dataset", d.dataset, (*DATASETS, *FILE_DATASETS, GIVEN))
    _check(d.val_size is None or d.val_size >= 0, "data.val_size", "must be >= 0 or null", d.val_size)
    _choice("data.labels", d.labels, LABELS)
    _check(d.labels == "as-is" or d.dataset == "npz", "data.labels",
           "remap renumbers npz labels (a folder's classes are its sub-folders)", d.labels)
    _check(d.label_map is None or (d.labels == "remap" and len(set(d.label_map)) == len(d.label_map)
                                   and min(d.label_map, default=0) >= 0), "data.label_map",
           "is recorded by a run with data.labels=remap: distinct labels >= 0", d.label_map)
    _check(d.train_subset is None or d.train_subset > 0, "data.train_subset", "must be > 0 or null", d.train_subset)
    _check(d.eps is None or d.eps > 0, "data.eps", "must be > 0 or null", d.eps)
    try:  # own data gives its radius; no L-infinity radius of 1 or more
        check_radii(cfg)
    except RadiusError as exc:
        raise ConfigError(str(exc)) from None
    _check(d.channels in (None, 1, 3), "data.channels", "must be 1, 3 or null", d.channels)
    _check(d.image_size is None or (len(d.image_size) == 2 and min(d.image_size) > 0), "data.image_size",
           "must be [H, W] of positive sizes or null", d.image_size)
    _check((d.mean is None) == (d.std is None), "data.std", "give data.mean and data.std together", d.std)
    _check(d.mean is None or (len(d.mean) == len(d.std) and len(d.mean) > 0), "data.mean",
           "must have one value per channel, as many as data.std", d.mean)
    _check(d.std is None or all(v > 0 for v in d.std), "data.std", "must be positive", d.std)
    _check(d.crop_padding is None or d.crop_padding >= 0, "data.crop_padding", "must be >= 0 or null", d.crop_padding)
    _check(d.workers >= 0, "data.workers", "must be >= 0", d.workers)
    _check(d.stream is not True or d.dataset == "folder", "data.stream", "streams folder datasets only", d.stream)
    if is_user_model(m.name):  # never imported here: validating a run's config must not run its code
        try:
            check_user_model_name(m.name)
        except ValueError as exc:
            raise ConfigError(f"model.name: {exc}") from None
        return
    _check(m.head is None, "model.head", "names the head of your own model (module:callable) only", m.head)
    try:
        model_spec(m.name)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.name: {exc}") from None
    try:
        model_spec(m.name, **m.kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.kwargs: {exc}") from None


def _validate_attack_and_method(cfg: Config) -> None:
    from ..methods import BASE_METHODS, InvalidSetting, compose_method  # building a method checks its settings

    a, me = cfg.attack, cfg.method
    _check(a.eps is None or a.eps > 0, "attack.eps", "must be > 0 or null", a.eps)
    _check(a.steps >= 1, "attack.steps", "must be >= 1", a.steps)
    _check(a.step_size is None or a.step_size > 0, "attack.step_size", "must be > 0 or null", a.step_size)
    _choice("attack.norm", a.norm, NORMS)
    _choice("attack.precision", a.precision, (AUTO, *PRECISIONS))
    _choice("method.name", me.name, tuple(BASE_METHODS))
    for key in WRAPPER_KEYS:
        _wrapper_settings(key, getattr(me, key), strict=True)
    try:  # the constructors check every setting, and beta on every base, though AT has none (so that
        # switching method.name cannot fail later)
        settings = method_settings(cfg)
        for name in BASE_METHODS:
            compose_method(**{**settings, "name": name})
    except InvalidSetting as exc:
        where = {wrapper.__name__: f"method.{key}." for key, wrapper in wrappers().items()}.get(exc.method, "method.")
        raise ConfigError(f"{where}{exc.setting}: {exc.rule}") from None
    except ValueError as exc:
        raise ConfigError(f"method: {exc}") from None


def _validate_optim(cfg: Config) -> None:
    o = cfg.optim
    _choice("optim.name", o.name, OPTIMIZERS)
    _check(o.lr > 0, "optim.lr", "must be > 0", o.lr)
    _check(0 <= o.momentum < 1, "optim.momentum", "must be in [0, 1)", o.momentum)
    _check(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0", o.weight_decay)
    _choice("optim.schedule", o.schedule, SCHEDULES)
    _check(
        all(x >= 0 for x in o.milestones) and all(x < y for x, y in zip(o.milestones, o.milestones[1:])),
        "optim.milestones", "must be non-negative and strictly increasing", o.milestones,
    )
    _check(0 < o.lr_decay <= 1, "optim.lr_decay", "must be in (0, 1]", o.lr_decay)
    _check(o.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0", o.warmup_epochs)


def _validate_train(cfg: Config) -> None:
    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    _check(0 <= t.seed < 2**32, "train.seed", "must be in [0, 2**32)", t.seed)
    _check(bool(_DEVICE.match(t.device)), "train.device", "must be auto, cpu, cuda, cuda:N or mps", t.device)
    _choice("train.precision", t.precision, STEP_PRECISIONS)
    for key in ("out", "init_from"):
        value = getattr(t, key)
        _check(value is None or value.strip() != "", f"train.{key}", "must be a non-empty path or null", value)
    _choice("train.compile", t.compile, COMPILE_CHOICES)
    _check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", "must be >= 1 or null", t.max_steps)
    for key in ("val_n", "val_eps", "time_budget_s", "checkpoint_every_s", "budget_s"):
        value = getattr(t, key)
        _check(value is None or value > 0, f"train.{key}", "must be > 0 or null", value)
    _check(t.collapse_margin is None or t.collapse_margin >= 0, "train.collapse_margin",
           "must be >= 0 (accuracy points) or null", t.collapse_margin)
    _check(t.collapse_epochs >= 1, "train.collapse_epochs", "must be >= 1", t.collapse_epochs)
    _check(t.val_every >= 1, "train.val_every", "must be >= 1", t.val_every)


def _validate_eval(cfg: Config) -> None:
    e = cfg.eval
    try:
        parse_attacks(e.attacks)
    except ValueError as exc:
        raise ConfigError(f"eval.attacks: {exc}") from None
    _check(e.n is None or e.n > 0, "eval.n", "must be > 0 or null", e.n)
    _check(e.aa_n is None or e.aa_n > 0, "eval.aa_n", "must be > 0 or null", e.aa_n)
    _check(e.batch_size >= 1, "eval.batch_size", "must be >= 1", e.batch_size)
    _choice("eval.compile", e.compile, COMPILE_CHOICES)

