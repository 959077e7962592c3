"""Typed run configuration: dataclasses loaded from YAML presets, overridable from the CLI.

Why plain dataclasses + ``yaml.safe_load``: a run's whole configuration is then one JSON-able
dict (saved next to every checkpoint), and every mistake is caught once, up front, by
:func:`validate`, with a one-line :class:`ConfigError` that starts with the dotted field name
(``method.rat.alpha: must be in [0, 1], got 2.0``) instead of failing hours into training.

Loading order (:func:`load_config`): the ``base:`` chain of YAML files (deep-merged, the
file itself on top), then the ``section.key=value`` overrides, then type checking and
coercion (:func:`config_from_dict`), then :func:`validate`.

The method section names the base method and its ``beta``, and holds the wrappers as mappings of
their constructors' keyword arguments: ``method.rat: {alpha: 0.1}`` is ``RAT(base, alpha=0.1)``,
``method.rat: null`` no RAT. The defaults live in the classes only (:func:`wrapper_arguments`). The
flat keys of earlier releases (``method.alpha``, ``method.awp_gamma``, ``rat: true``) are converted
wherever a config is read (:func:`upgrade_flat_method`), so old files, run directories and
``--set`` overrides keep their meaning.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# choices are declared once, next to the code that implements them; the methods' own settings
# (beta, RAT's, AWP's) are checked by building them (validate). These imports bring in torch.
from .attacks.pgd import NORMS, PRECISIONS
from .attacks.protocols import ATTACKS, parse_attacks
from .compile import COMPILE_CHOICES
from .device import AUTO, emulates_bfloat16, resolve_device, resolve_precision
from .methods import AWP, BASE_METHODS, RAT, STEP_PRECISIONS, TRADES, InvalidSetting, Method, compose_method

DEFAULT_PRESET = "fmnist-cpu"
CONFIG_DIR_ENV = "RAT_CONFIG_DIR"

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "multistep", "cosine", "onecycle")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda|cuda:\d+)$")


class ConfigError(Exception):
    """A bad configuration; the message is one line starting with the dotted field name."""

    def __init__(self, message: str) -> None:
        # Messages may embed YAML parser text or repr()s of user values: keep them on one
        # line so the CLI can print them as-is.
        super().__init__(" ".join(str(message).split()))


# --------------------------------------------------------------------------- dataclasses


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"  # a built-in (ratkit.data.DATASETS), or folder / npz: your own files
    data_dir: str | None = None
    # held out of the training set, for checkpoint selection; null: your own data's tenth (at most 5,000),
    # a built-in dataset's 5,000, chosen when the run starts and recorded here
    val_size: int | None = None
    train_subset: int | None = None  # first N of the post-split training set; None = all
    augment: bool = True
    # the threat radius (Linf, or L2 with attack.norm L2) of training, validation and the final
    # evaluation; required for folder/npz data, null = the built-in dataset's protocol eps
    eps: float | None = None
    channels: int | None = None  # folder data: 1 or 3 forces grayscale or RGB; null = as the images are
    image_size: list[int] | None = None  # [H, W]: resize every image (Pillow bilinear); null = all one size
    # per-channel statistics the model normalises with; null = the built-in's, or computed from a file
    # dataset's training split when a run starts and recorded here
    mean: list[float] | None = None
    std: list[float] | None = None
    hflip: bool | None = None  # random horizontal flip; null = the dataset's default (off for your own data)
    crop_padding: int | None = None  # random-crop padding; null = the dataset's default (H // 8 for your own)
    stream: bool | None = None  # folder data: decode files in worker processes; null = only when not in memory
    workers: int = 2  # decoding processes when streaming
    num_classes: int | None = None  # data given from Python (ratkit.fit): recorded for later commands
    image_shape: list[int] | None = None
    # npz labels that skip numbers (3, 7, 9, 11) are refused; remap: train on the sorted labels present,
    # class k being label_map[k] (recorded when the run starts, so rat eval maps test labels the same way)
    labels: str = "as-is"
    label_map: list[int] | None = None


@dataclass
class ModelConfig:
    name: str = "smallcnn"  # a ratkit.models.MODELS name, "wrn-D-W", or your own "module.path:callable"
    kwargs: dict = field(default_factory=dict)  # extra constructor arguments
    head: str | None = None  # your own model: its classifier nn.Linear (null: found by its class count)


@dataclass
class AttackConfig:
    """The training attack."""

    eps: float | None = None  # None = the dataset's eps for `norm`
    steps: int = 10
    step_size: float | None = None  # None = eps / 4
    norm: str = "Linf"
    # "auto": bfloat16 autocast where the device computes it natively, else float32 (ratkit.device.resolve_precision);
    # a run records the resolved value in config.yaml, so a resume continues as it started, on any machine
    precision: str = "auto"


# the method section's wrappers: its key -> the class whose keyword arguments the key's mapping holds
WRAPPERS: dict[str, type[Method]] = {"rat": RAT, "awp": AWP}


def wrapper_arguments(wrapper: type[Method]) -> dict[str, tuple[Any, Any]]:
    """The keyword arguments of a wrapper that a config holds, ``{name: (annotation, default)}``, read
    from the class, so that the config keeps no second copy of them: every field but the method it
    wraps (``RAT.base``, ``AWP.method``: an object, not a value). Tuples read as lists (YAML has none).

    Example: ``wrapper_arguments(AWP)`` is ``{"gamma": (float | None, None), "warmup": (int, 0)}``."""
    hints = typing.get_type_hints(wrapper)
    out = {}
    for f in dataclasses.fields(wrapper):
        tp = hints[f.name]
        if not f.init or (isinstance(tp, type) and issubclass(tp, Method)):
            continue
        if typing.get_origin(tp) is tuple:
            tp = list[typing.get_args(tp)[0]]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = (tp, _jsonable(default))
    return out


@dataclass
class MethodConfig:
    name: str = "trades"  # a base method: a key of ratkit.methods.BASE_METHODS
    beta: float = TRADES.beta  # TRADES' and MART's weight of the robust term (their default); AT has none
    # the wrappers AWP(RAT(base)): null (or false) = off; a mapping = the wrapper's keyword arguments
    # (wrapper_arguments), the class's defaults where left out ({}: all of them); true = on, with the
    # arguments given so far (a base file's, an earlier --set) or the defaults
    rat: dict | None = field(default_factory=dict)
    awp: dict | None = None

    def __post_init__(self) -> None:
        # a wrapper's mapping holds every argument, the class's defaults filled in: a run records all of
        # them, and a converted flat config equals the same settings written in the nested form
        for key, wrapper in WRAPPERS.items():
            given = getattr(self, key)
            if isinstance(given, dict):
                defaults = {name: default for name, (_, default) in wrapper_arguments(wrapper).items()}
                setattr(self, key, {**defaults, **given})


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    # multistep: lr x lr_decay from each milestone epoch on, epochs counted from 1 as in the authors'
    # scripts ([100, 150] of 200: the 100th and 150th epochs already run at the decayed rates)
    milestones: list[int] = field(default_factory=lambda: [100, 150])
    lr_decay: float = 0.1
    warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    out: str | None = None  # None = chosen by the trainer
    val_n: int | None = 1000
    # the eps of validation for the whole run; null: the evaluation eps, recorded when the run starts
    val_eps: float | None = None
    val_every: int = 1  # validate after every N-th epoch and the last; best and collapse see validated epochs only
    # stop at the first epoch end after this many seconds of training steps, counted over the
    # whole run (resumes included); null = no budget
    time_budget_s: float | None = None
    # the whole job (training and the final evaluation) in this many seconds: before the run starts,
    # the machine's speed is measured and train.max_steps / eval.aa_n chosen to fit (ratkit.train.budget);
    # the plan is recorded in config.yaml and plan.json, and a resume follows it. null = no plan
    budget_s: float | None = None
    # stop after this many optimizer steps (the learning-rate schedule spans them); null = train.epochs
    max_steps: int | None = None
    # torch.compile the model for training and validation: auto (where it was measured to win), true, false
    compile: str = "auto"
    # write `last` mid-epoch after this many seconds of training steps, so a kill -9 or a node
    # failure loses at most that much; null = only at epoch ends (and on Ctrl-C, SIGTERM, SIGUSR1)
    checkpoint_every_s: float | None = None
    # start a new run from these weights (a ratkit checkpoint: a run directory = its best, or a
    # .safetensors file) with a fresh optimizer; the model spec must match this run's
    init_from: str | None = None
    channels_last: bool = True  # NHWC memory layout for conv models (faster on CPU; docs/performance.md)
    # the whole training step (attack, loss, backward) under autocast: float32 (none), bfloat16, or
    # float16 with a gradient scaler; loss terms and RAT's statistics stay float32, evaluation is float32
    precision: str = "float32"
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    # robust-accuracy collapse warning: validation PGD-20 more than `collapse_margin` points
    # below its best for `collapse_epochs` epochs in a row (null margin: no check)
    collapse_margin: float | None = 5.0
    collapse_epochs: int = 2


@dataclass
class EvalConfig:
    """The final evaluation after training."""

    attacks: str = ",".join(ATTACKS)  # every attack of our protocol (ratkit.attacks.protocols)
    n: int | None = None
    aa_n: int | None = 500
    batch_size: int = 256
    eps: float | None = None  # validation and final evaluation; null: the dataset's protocol eps, as rat eval
    compile: str = "auto"  # torch.compile the model for the final evaluation: auto, true, false


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS: dict[str, type] = {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _field_types(section: str) -> dict[str, Any]:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------- type checking


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for ``X | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return tp.__name__


def _jsonable(value: Any) -> Any:
    """Tuples become lists (recursively) so model kwargs survive YAML/JSON round trips."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _coerce(name: str, value: Any, tp: Any, strict: bool = False) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form.

    Ints are accepted for floats. A string that parses as a finite float is accepted for a
    float field unless ``strict``, because YAML 1.1 reads ``1e-4`` (no dot) as a string.
    """
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: expected {_type_name(inner)}, got None")

    def bad() -> ConfigError:
        return ConfigError(f"{name}: expected {_type_name(inner)}, got {value!r}")

    if inner is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if inner is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str) and not strict:
            try:
                out = float(value)
            except ValueError:
                raise bad() from None
        else:
            raise bad()
        if not math.isfinite(out):
            raise ConfigError(f"{name}: must be finite, got {value!r}")
        return out
    if inner is str:
        if name.rsplit(".", 1)[-1] == "compile" and isinstance(value, bool):  # YAML's true/false
            return "true" if value else "false"
        if not isinstance(value, str):
            raise bad()
        return value
    if inner is dict:
        if not isinstance(value, dict):
            raise bad()
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{name}: keys must be strings, got {k!r}")
        return _jsonable(value)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_coerce(f"{name}[{i}]", v, item, strict) for i, v in enumerate(value)]
    raise TypeError(f"{name}: unsupported annotation {tp!r}")  # a bug in this module


def _unknown(name: str, known) -> ConfigError:
    return ConfigError(f"{name}: unknown field; known: {', '.join(known)}")


def _wrapper_settings(key: str, value: Any, strict: bool = False) -> dict | None:
    """``method.<key>`` checked against the wrapper's arguments (names and types; the wrapper checks
    their values): None when the wrapper is off, else the mapping with its values coerced."""
    name, wrapper = f"method.{key}", WRAPPERS[key]
    arguments = wrapper_arguments(wrapper)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected null (off) or a mapping of {wrapper.__name__}'s arguments "
                          f"({', '.join(arguments)}), got {value!r}")
    for arg in value:
        if arg not in arguments:
            raise _unknown(f"{name}.{arg}", arguments)
    return {arg: _coerce(f"{name}.{arg}", v, arguments[arg][0], strict) for arg, v in value.items()}


def config_from_dict(d: dict) -> Config:
    """Build a validated :class:`Config` from plain data; missing keys take the defaults. A method
    section in the flat form of earlier releases is converted (:func:`upgrade_flat_method`)."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(d).__name__}")
    d = upgrade_flat_method(d)
    sections = {}
    for sec, body in d.items():
        if sec not in SECTIONS:
            raise ConfigError(f"{sec}: unknown section; known: {', '.join(SECTIONS)}")
        if body is None:  # an empty "eval:" in YAML
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(f"{sec}: expected a mapping, got {body!r}")
        types_ = _field_types(sec)
        kwargs = {}
        for key, value in body.items():
            if key not in types_:
                raise _unknown(f"{sec}.{key}", types_)
            if sec == "method" and key in WRAPPERS:
                kwargs[key] = _wrapper_settings(key, value)
            else:
                kwargs[key] = _coerce(f"{sec}.{key}", value, types_[key])
        sections[sec] = SECTIONS[sec](**kwargs)
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (JSON/YAML-able); ``config_from_dict`` inverts it."""
    return _jsonable(dataclasses.asdict(cfg))


# --------------------------------------------------------------------------- validation


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
    from .data import DATASETS
    from .data.user import FILE_DATASETS, GIVEN, LABELS
    from .models import model_spec
    from .models.user import check_user_model_name, is_user_model
    from .threat import RadiusError, check_radii

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
    a, me = cfg.attack, cfg.method
    _check(a.eps is None or a.eps > 0, "attack.eps", "must be > 0 or null", a.eps)
    _check(a.steps >= 1, "attack.steps", "must be >= 1", a.steps)
    _check(a.step_size is None or a.step_size > 0, "attack.step_size", "must be > 0 or null", a.step_size)
    _choice("attack.norm", a.norm, NORMS)
    _choice("attack.precision", a.precision, (AUTO, *PRECISIONS))
    _choice("method.name", me.name, tuple(BASE_METHODS))
    for key in WRAPPERS:
        _wrapper_settings(key, getattr(me, key), strict=True)
    try:  # the constructors check every setting, and beta on every base, though AT has none (so that
        # switching method.name cannot fail later)
        settings = method_settings(cfg)
        for name in BASE_METHODS:
            compose_method(**{**settings, "name": name})
    except InvalidSetting as exc:
        where = {wrapper.__name__: f"method.{key}." for key, wrapper in WRAPPERS.items()}.get(exc.method, "method.")
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


# --------------------------------------------------------------------------- files and presets


def preset_dir() -> Path:
    """The presets directory: $RAT_CONFIG_DIR, else the ``configs`` folder shipped inside the
    package (package data), so an installed wheel finds its presets from any directory."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from importlib.resources import files

    return Path(str(files("ratkit") / "configs"))


def preset_description(name: str) -> str:
    """The first sentence of a preset's leading comment block (what `rat presets` shows)."""
    lines = []
    for line in (preset_dir() / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"(?<! al)(?<!e\.g)\.(\s|$)", text)  # "et al." and "e.g." end no sentence
    return text[:end.start() + 1] if end else text


def list_presets() -> list[str]:
    """Preset names (file stems of ``*.yaml`` in :func:`preset_dir`), sorted."""
    directory = preset_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml") if p.is_file())


def _preset_path(name: str) -> Path | None:
    directory = preset_dir()
    for candidate in (directory / name, directory / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _resolve_path(path: str | Path) -> Path:
    """A YAML file path, else a preset name (with or without .yaml)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    if len(p.parts) == 1:
        found = _preset_path(str(path))
        if found is not None:
            return found.resolve()
    presets = ", ".join(list_presets()) or f"(none in {preset_dir()})"
    raise ConfigError(f"{path}: no such config file or preset; available presets: {presets}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report cut to "problem (line L, column C)"."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(exc)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``; nested dicts merge, everything else (lists included) replaces."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_chain(path: Path, stack: tuple[Path, ...] = ()) -> dict:
    """A file's contents deep-merged over its ``base:`` chain (resolved relative to the file)."""
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise ConfigError(f"base: cycle in config inheritance: {chain}")
    data = _read_yaml(path)
    _refuse_both_forms(data, path)
    base = data.pop("base", None)
    if base is None:
        return upgrade_flat_method(data)
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"base: expected a file name, got {base!r} (in {path})")
    candidate = (path.parent / base).expanduser()
    if candidate.is_file():
        base_path = candidate.resolve()
    elif (path.parent / f"{base}.yaml").is_file():
        base_path = (path.parent / f"{base}.yaml").resolve()
    else:
        found = _preset_path(base) if len(Path(base).parts) == 1 else None
        if found is None:
            raise ConfigError(f"base: {base!r} not found next to {path} nor among the presets")
        base_path = found.resolve()
    # converted at every level, so that a file's keys, flat or nested, override its base's
    return upgrade_flat_method(_deep_merge(_load_chain(base_path, (*stack, path)), _wrapper_switches(data)))


# the method keys of the flat MethodConfig of earlier releases: old key -> (wrapper, its argument)
FLAT_METHOD_KEYS = {"alpha": ("rat", "alpha"), "sigma": ("rat", "sigma"), "order": ("rat", "order"),
                    "pairing": ("rat", "pairing"), "clean_terms": ("rat", "clean_terms"),
                    "noise_layers": ("rat", "noise_layers"), "taylor": ("rat", "taylor"),
                    "taylor_sigma": ("rat", "taylor_sigma"), "awp_gamma": ("awp", "gamma"),
                    "awp_warmup": ("awp", "warmup")}


def _refuse_both_forms(d: dict, path: Path) -> None:
    """ConfigError when one file sets a wrapper's argument both ways, flat (``method.alpha``) and
    nested (``method.rat.alpha``): which one it means cannot be told."""
    method = d.get("method")
    if not isinstance(method, dict):
        return
    for old, (wrapper, arg) in FLAT_METHOD_KEYS.items():
        if old in method and isinstance(method.get(wrapper), dict) and arg in method[wrapper]:
            raise ConfigError(f"method.{old} and method.{wrapper}.{arg}: {path} sets both, the flat key of earlier "
                              f"releases and the nested one; keep method.{wrapper}.{arg}")


def _wrapper_switches(d: dict) -> dict:
    """``d`` with the wrappers' switches as the nested form has them: ``true`` an empty mapping (which
    merges over a base file's mapping, keeping its arguments), ``false`` null."""
    method = d.get("method")
    if not isinstance(method, dict) or not any(isinstance(method.get(key), bool) for key in WRAPPERS):
        return d
    switched = {key: ({} if value else None) if isinstance(value, bool) and key in WRAPPERS else value
                for key, value in method.items()}
    return {**d, "method": switched}


def upgrade_flat_method(d: dict) -> dict:
    """A raw config mapping with its method section in the nested form (a new dict; ``d`` is left as
    it is). The flat form of earlier releases means the same there: ``rat: true`` with ``alpha: 0.1``
    becomes ``rat: {alpha: 0.1}``, ``awp: true`` with ``awp_gamma: 0.01`` becomes ``awp: {gamma: 0.01}``;
    the flat arguments of a wrapper that is off (``rat: false``, ``awp`` unset) are dropped, as they had
    no effect. A flat key given beside the wrapper's mapping wins (it is the later ``--set``). As every
    mapping is then filled in with the class's defaults (:class:`MethodConfig`), a run directory an
    earlier release wrote is the same run (``train.same_run``) as its settings in the nested form.

    Example: ``upgrade_flat_method({"method": {"rat": True, "alpha": 0.1}})`` is
    ``{"method": {"rat": {"alpha": 0.1}}}``."""
    d = _wrapper_switches(d)
    method = d.get("method")
    if not isinstance(method, dict) or not set(method) & set(FLAT_METHOD_KEYS):
        return d
    method = {key: value for key, value in method.items() if key not in FLAT_METHOD_KEYS}
    defaults = MethodConfig()
    for key in WRAPPERS:
        given = {arg: d["method"][old] for old, (wrapper, arg) in FLAT_METHOD_KEYS.items()
                 if wrapper == key and old in d["method"]}
        current = method.get(key, getattr(defaults, key))
        if given and isinstance(current, dict):
            method[key] = {**current, **given}
    return {**d, "method": method}


def apply_override(d: dict, override: str | tuple[str, Any]) -> dict:
    """Apply one ``section.key=value`` (value parsed as YAML: ``--set``) or one typed
    ``(section.key, value)`` pair (taken as it is: the command line's own flags, so that
    ``--out 2024-05-01`` or ``--out null`` name a directory, not a date or None) to a raw
    config dict in place.

    Deeper paths reach into dict fields: ``model.kwargs.hidden=100``, ``method.rat.alpha=0.1`` (which
    switches RAT on if it was off). The flat method keys of earlier releases (``method.alpha=0.1``,
    ``method.awp_gamma=0.01``) are accepted and converted by :func:`config_from_dict`; of a flat and a
    nested key for one setting the later wins (``method.alpha=0.5`` then ``method.rat.alpha=0.7``: 0.7).
    """
    typed = isinstance(override, tuple) and len(override) == 2 and isinstance(override[0], str)
    if not typed and (not isinstance(override, str) or "=" not in override):
        raise ConfigError(f"{override}: malformed override, expected section.key=value")
    key, _, text = override.partition("=") if not typed else (override[0], "=", None)
    key = key.strip()
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{key or override}: malformed override, expected section.key=value")
    sec, name = parts[0], parts[1]
    if sec not in SECTIONS:
        raise ConfigError(f"{key}: unknown section {sec!r}; known: {', '.join(SECTIONS)}")
    types_ = _field_types(sec)
    if name not in types_ and not (sec == "method" and len(parts) == 2 and name in FLAT_METHOD_KEYS):
        raise _unknown(f"{sec}.{name}", types_)
    try:
        value = override[1] if typed else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {_yaml_problem(exc)}") from None
    node = d.get(sec)
    if not isinstance(node, dict):
        node = d[sec] = {}
    if sec == "method" and len(parts) == 2 and name in WRAPPERS and value is True and isinstance(node.get(name), dict):
        return d  # on already: --rat keeps the arguments given so far
    if sec == "method" and name in WRAPPERS and (len(parts) > 2 or isinstance(value, dict)):
        # the later of a flat and a nested key for one setting wins: the flat keys given before
        # this one (converted only when the config is built) say no more
        nested = parts[2] if len(parts) > 2 else None  # None: a mapping, every argument
        for old, (wrapper, arg) in FLAT_METHOD_KEYS.items():
            if wrapper == name and nested in (None, arg):
                node.pop(old, None)
    for p in parts[1:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value
    return d


def load_config(path: str | Path | None = None, overrides: list | tuple = ()) -> Config:
    """Load a YAML file or preset (default ``fmnist-cpu``), apply overrides (see
    :func:`apply_override`), validate.

    Example: ``load_config("fmnist-cpu", ["train.epochs=8", ("train.out", "runs/2024-05-01")])``"""
    resolved = _resolve_path(DEFAULT_PRESET if path is None else path)
    d = _load_chain(resolved)
    if isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    for ov in overrides:
        apply_override(d, ov)
    method = d.get("method")
    given_flat = [k for k in method if k in FLAT_METHOD_KEYS] if isinstance(method, dict) else []
    cfg = config_from_dict(d)
    for old in given_flat:  # the file's own were converted by _load_chain: these are overrides
        wrapper, arg = FLAT_METHOD_KEYS[old]
        if getattr(cfg.method, wrapper) is None:
            print(f"warning: method.{old}: has no effect, {WRAPPERS[wrapper].__name__} is off (method.{wrapper}: "
                  f"null); method.{wrapper}.{arg}=... switches it on with that setting", file=sys.stderr, flush=True)
    return cfg


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the config as YAML; :func:`load_config` reads it back to an equal Config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- derived values


def resolved_attack(cfg: Config) -> tuple[float, float]:
    """(eps, step_size) of the training attack: :func:`ratkit.threat.train_radius`."""
    from .threat import train_radius

    return train_radius(cfg)


def evaluation_eps(cfg: Config) -> float:
    """The eps of validation and of the final evaluation: :func:`ratkit.threat.evaluation_eps`."""
    from .threat import evaluation_eps as radius

    return radius(cfg)


def protocol_eps(cfg: Config) -> float:
    """The run's threat radius for its norm: :func:`ratkit.threat.run_eps`."""
    from .threat import run_eps

    return run_eps(cfg)


def data_source(cfg: Config):
    """The run's data as a :class:`ratkit.data.user.DataSource`: what every command needs to read
    the same data and normalise it identically.

    Example: ``source_info(data_source(load_config("fmnist-cpu"))).num_classes`` is 10."""
    from .data.user import DataSource

    d = cfg.data
    return DataSource(dataset=d.dataset, data_dir=d.data_dir, eps=d.eps, channels=d.channels,
                      image_size=None if d.image_size is None else tuple(d.image_size),
                      mean=None if d.mean is None else tuple(d.mean), std=None if d.std is None else tuple(d.std),
                      hflip=d.hflip, crop_padding=d.crop_padding, num_classes=d.num_classes,
                      image_shape=None if d.image_shape is None else tuple(d.image_shape), stream=d.stream,
                      workers=d.workers, labels=d.labels,
                      label_map=None if d.label_map is None else tuple(d.label_map))


def attack_precision(cfg: Config) -> str:
    """The training attack's precision with ``auto`` resolved for the run's device (a run resolves
    it once, when it starts, and records it: :func:`with_resolved_precision`)."""
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


__all__ = [
    "AttackConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FLAT_METHOD_KEYS",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_override",
    "attack_precision",
    "config_from_dict",
    "data_source",
    "config_to_dict",
    "list_presets",
    "load_config",
    "method_label",
    "method_settings",
    "preset_description",
    "preset_dir",
    "protocol_eps",
    "resolved_attack",
    "save_config",
    "upgrade_flat_method",
    "validate",
    "WRAPPERS",
    "with_resolved_precision",
    "wrapper_arguments",
]
