"""The configuration's schema: one dataclass per section of a run's configuration, their field
types checked and coerced (``_coerce``: every mistake a one-line :class:`ConfigError` that starts
with the dotted field name), the wrappers' arguments read from their classes, and the plain nested
dict a Config saves as (:func:`config_to_dict`). Reading is ``read.py``, the rules ``validate.py``."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..choices import ATTACKS, TRADES_BETA

if TYPE_CHECKING:
    from ..methods import Method


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


# the method section's wrappers, by key: method.rat holds RAT's keyword arguments, method.awp AWP's
WRAPPER_KEYS = ("rat", "awp")


@functools.cache
def wrappers() -> dict[str, type[Method]]:
    """The method section's wrappers: its key -> the class whose keyword arguments the key's mapping
    holds (``{"rat": RAT, "awp": AWP}``, also ``ratkit.config.WRAPPERS``). Imported when first asked
    for, not with the configuration: the classes bring torch."""
    from ..methods import AWP, RAT

    return dict(zip(WRAPPER_KEYS, (RAT, AWP)))


def wrapper_arguments(wrapper: type[Method]) -> dict[str, tuple[Any, Any]]:
    """The keyword arguments of a wrapper that a config holds, ``{name: (annotation, default)}``, read
    from the class, so that the config keeps no second copy of them: every field but the method it
    wraps (``RAT.base``, ``AWP.method``: an object, not a value). Tuples read as lists (YAML has none).

    Example: ``wrapper_arguments(AWP)`` is ``{"gamma": (float | None, None), "warmup": (int, 0)}``."""
    from ..methods import Method

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
    beta: float = TRADES_BETA  # TRADES' and MART's weight of the robust term (their default); AT has none
    # the wrappers AWP(RAT(base)): null (or false) = off; a mapping = the wrapper's keyword arguments
    # (wrapper_arguments), the class's defaults where left out ({}: all of them); true = on, with the
    # arguments given so far (a base file's, an earlier --set) or the defaults
    rat: dict | None = field(default_factory=dict)
    awp: dict | None = None

    def __post_init__(self) -> None:
        # a wrapper's mapping holds every argument, the class's defaults filled in: a run records all of
        # them, and a converted flat config equals the same settings written in the nested form
        for key, wrapper in wrappers().items():
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
    # below its best for `collapse_epochs` epochs in a row (null margin: no check); and, always, the
    # warning that the model is at chance, one output for every image, for `collapse_epochs` validations
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
    name, wrapper = f"method.{key}", wrappers()[key]
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


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (JSON/YAML-able); ``config_from_dict`` inverts it."""
    return _jsonable(dataclasses.asdict(cfg))

