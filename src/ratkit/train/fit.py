"""``ratkit.fit``: train any ``nn.Module`` on any dataset from Python, with the trainer of ``rat train``.

Not a second loop: :func:`fit` writes the same run directory (config.yaml, metrics.jsonl, best
and last checkpoints) through the trainer of ``rat train`` (:func:`ratkit.train.loop.train_built`,
its entry for a model and data built here), so validation, best/last selection, exact resume,
SIGTERM/SIGUSR1 preemption, periodic checkpoints, the time budget and the collapse warning all
work as for ``rat train``, and ``rat eval`` opens the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..data.info import DatasetInfo
from ..data.tensordata import TensorData
from ..data.source import GIVEN, channel_statistics, check_class_count, default_crop_padding, default_val_size

__all__ = ["FitResult", "fit"]


@dataclass
class FitResult:
    """What :func:`fit` made: the run directory, its checkpoints, the trained model (the best
    checkpoint's weights loaded when there is one), and the final report when test data was given."""

    run_dir: Path
    model: nn.Module
    report: dict | None = None

    @property
    def best(self) -> Path:
        return self.run_dir / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.run_dir / "last.safetensors"


def _as_tensors(data, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a TensorData, an (x, y) pair or a map-style Dataset of (image in [0, 1], label)."""
    if isinstance(data, TensorData):
        return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.Dataset) or hasattr(data, "__getitem__"):
        try:
            n = len(data)
        except TypeError:
            raise ValueError(f"{what}: a Dataset given to fit must have a length (map-style)") from None
        if n == 0:
            raise ValueError(f"{what}: the dataset is empty")
        items = [data[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
    else:
        raise ValueError(f"{what}: expected a TensorData, an (x, y) pair of tensors or a map-style Dataset, "
                         f"got {type(data).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{what}: expected images N x C x H x W and labels N, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != torch.uint8:
        x = x.float()
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{what}: images must be in [0, 1] (the attacks' eps is in pixel units)")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be integers, got {y.dtype}")
    return x, y.long()


def fit(model: nn.Module, train, *, eps: float, val=None, val_size: int | None = None, test=None,
        method=None, epochs: int = 10, batch_size: int = 128, norm: str = "Linf", head: str | None = None,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None, num_classes: int | None = None,
        optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
        schedule: str = "multistep", milestones: Sequence[int] | None = None, augment: bool = True,
        run_dir: str | Path | None = None, resume: bool = False, seed: int = 0, device: str = "auto",
        model_name: str | None = None, model_kwargs: dict | None = None, quiet: bool = False,
        on_step: Callable | None = None, on_epoch_end: Callable[[dict], None] | None = None,
        settings: Sequence[str] = ()) -> FitResult:
    """Adversarially train ``model`` on ``train`` with the trainer of ``rat train``; returns a :class:`FitResult`.

    Example::

        from ratkit import fit
        from ratkit.methods import RAT, TRADES
        result = fit(MyNet(), my_dataset, eps=8 / 255, method=RAT(TRADES()), epochs=30, run_dir="runs/mine")
        print(result.best, result.report)                    # rat eval runs/mine --model mymod:MyNet opens it too
        fit(MyNet(), my_dataset, eps=8 / 255, method=RAT(TRADES()), epochs=30, run_dir="runs/mine", resume=True)

    Args:
        model: any classifier ``nn.Module`` taking [0, 1] images (wrapped with :func:`ratkit.models.wrap`;
            ``head`` names its last ``nn.Linear``, found by the number of classes when None).
        train: a TensorData, an (x, y) pair, or a map-style ``torch.utils.data.Dataset`` of
            (image tensor C x H x W in [0, 1], label); held in memory.
        eps: the threat radius (Linf, or L2 with ``norm="L2"``) of training, validation and evaluation.
        val: validation data like ``train``; None holds out ``val_size`` training images
            (default: a tenth, at most 5,000) for choosing the best checkpoint.
        test: test data like ``train``: the best checkpoint is evaluated on it with the protocol.
        method: a method object (``RAT(TRADES())``, ``AWP(AT())``, ...) whose attack is built at ``eps``
            and ``norm`` when it was given none (an attack at another radius is refused); None: the
            config's default, RAT-TRADES with the paper's settings at ``eps``. The run records it in
            config.yaml (``method.*``, ``attack.steps|step_size|precision``), so a resume and ``rat eval``
            rebuild it: AT, TRADES or MART, in RAT and/or AWP (AWP outermost); another is refused.
        mean, std: normalisation the wrapper applies (default: computed from ``train``).
        model_name, model_kwargs: how later commands rebuild the model (``module:callable`` and its
            kwargs); default: the model's class, called without arguments.
        settings: further ``section.key=value`` config overrides (``train.time_budget_s=3600``,
            ``train.checkpoint_every_s=600``, ``optim.warmup_epochs=1``, ...).
        on_step: called after every step with the run's Progress; on_epoch_end: after every epoch
            with its metrics row.
    """
    from ..config import load_config
    from ..models import WrappedModel, find_classifier_head, wrap
    from ..models.user import user_model_spec
    from ..threat import STEP_FOLLOWS_EPS, method_at_radius, train_radius
    from .loop import train_built
    from .start import build_method
    from .rundir import load_run_config, resume_config

    x, y = _as_tensors(train, "train")
    classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    check_class_count("fit", classes)
    shape = tuple(int(d) for d in x.shape[1:])
    if mean is None or std is None:
        mean, std = channel_statistics(x[i:i + 1024] for i in range(0, len(x), 1024))
    if isinstance(model, WrappedModel):
        wrapped = model
        head = model.head_path
    else:
        head = head or find_classifier_head(model, classes, shape)
        wrapped = wrap(model, head=head, mean=mean, std=std)
    net = wrapped.net
    name = model_name or f"{type(net).__module__}:{type(net).__qualname__}"
    spec = user_model_spec(name, model_kwargs or {}, head, mean, std)
    val_data = None
    if val is not None:
        vx, vy = _as_tensors(val, "val")
        val_data = TensorData(vx, vy, _info(classes, shape, mean, std, eps))
    if val_size is None:
        val_size = 0 if val is not None else default_val_size(GIVEN, len(x))
    overrides = [("data.dataset", GIVEN), ("data.eps", float(eps)), ("data.num_classes", classes),
                 ("data.image_shape", list(shape)), ("data.mean", list(mean)), ("data.std", list(std)),
                 ("data.val_size", int(val_size)), ("data.augment", bool(augment)), ("model.name", name),
                 ("model.kwargs", dict(model_kwargs or {})), ("model.head", head), ("attack.norm", norm),
                 ("attack.eps", None), STEP_FOLLOWS_EPS, ("train.epochs", int(epochs)),
                 ("train.batch_size", int(batch_size)), ("train.seed", int(seed)), ("train.device", device),
                 ("optim.name", optimizer), ("optim.lr", float(lr)), ("optim.momentum", float(momentum)),
                 ("optim.weight_decay", float(weight_decay)), ("optim.schedule", schedule)]
    if milestones is not None:
        overrides.append(("optim.milestones", [int(m) for m in milestones]))
    overrides += list(settings)
    info = _info(classes, shape, mean, std, eps)
    if resume and run_dir is None:
        raise ValueError("fit: resume=True needs the run_dir of the run to continue")

    def configure(more=(), own=True):
        if resume:  # what a resume may change: the length of the run and the caller's own settings
            return resume_config(run_dir, [("train.epochs", int(epochs)), *(settings if own else ()), *more])
        return load_config(None, [*overrides, *more])

    # resumed with a method: the caller's settings of its attack gave way to the method's own when the run
    # started (recorded), so they are applied under the method's settings, never alone
    cfg = configure(own=not (resume and method is not None))
    if method is not None:  # its attack at the run's radius, or refused before the run directory is made
        method = method_at_radius(method, train_radius(cfg)[0], cfg.attack.norm)
    # the method trained is recorded (a method given again on a resume must be it); a run from before fit
    # recorded it (attack.step_size null) resumes with the method given, as it did
    if not resume or cfg.attack.step_size is not None:
        cfg = recorded_method_config(method if method is not None else build_method(cfg), configure)
    out = train_built(cfg, run_dir, data=(TensorData(x, y, info), val_data), model=(wrapped, spec), method=method,
                      resume=resume, quiet=quiet, on_step=on_step, on_epoch_end=on_epoch_end)
    report = None
    if test is not None:
        report = _evaluate_given(out, load_run_config(out), test, info, quiet)
    best = out / "best.safetensors"
    if best.exists():
        from ..checkpoints import read_checkpoint

        tensors, _ = read_checkpoint(best)
        wrapped.load_state_dict({k[len("model/"):]: v.to(next(wrapped.parameters()).device)
                                 for k, v in tensors.items() if k.startswith("model/")})
    return FitResult(run_dir=Path(out), model=wrapped.eval(), report=report)


def method_settings_of(method) -> list[tuple[str, Any]]:
    """The config settings that record ``method``, a base (AT, TRADES, MART) in RAT and/or AWP, AWP
    outermost: its name, beta, wrappers' arguments and training attack; ConfigError for another."""
    from ..config import WRAPPERS, ConfigError, wrapper_arguments
    from ..methods import BASE_METHODS

    settings, inner = [], method
    for key, attr in (("awp", "method"), ("rat", "base")):  # AWP(RAT(base)): the order the config composes
        wrapper = WRAPPERS[key]
        if type(inner) is wrapper:
            arguments = {name: _plain(getattr(inner, name)) for name in wrapper_arguments(wrapper)}
            settings.append((f"method.{key}", arguments))
            inner = getattr(inner, attr)
        else:
            settings.append((f"method.{key}", None))
    name = next((n for n, cls in BASE_METHODS.items() if type(inner) is cls), None)
    if name is None:
        bases = ", ".join(cls.__name__ for cls in BASE_METHODS.values())
        raise ConfigError(f"method: {_composition(method)} cannot be recorded in the run's config.yaml, so a resume "
                          f"and rat eval could not rebuild it; give {bases} in RAT and/or AWP (AWP outermost)")
    attack = inner.attack
    settings += [("method.name", name), ("attack.steps", attack.steps), ("attack.step_size", attack.step_size),
                 ("attack.precision", attack.precision)]
    if hasattr(inner, "beta"):
        settings.append(("method.beta", float(inner.beta)))
    return settings


def recorded_method_config(method, configure: Callable):
    """``configure(settings)``'s config recording ``method`` (:func:`method_settings_of`), checked to
    rebuild exactly ``method``; a method it cannot express is refused in one line."""
    from ..config import ConfigError
    from .start import build_method

    cfg = configure(method_settings_of(method))
    if build_method(cfg) != method:
        raise ConfigError(f"method: {_composition(method)} has settings the run's config.yaml cannot record "
                          "(method.name, method.beta, method.rat, method.awp, attack.steps|step_size|precision), so a "
                          "resume and rat eval could not rebuild it; build its parts with their own arguments")
    return cfg


def _composition(method) -> str:
    """``AWP(RAT(TRADES))``: the classes of a method and the methods it wraps."""
    inner = getattr(method, "method", None) or getattr(method, "base", None)
    return type(method).__name__ + (f"({_composition(inner)})" if inner is not None else "")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _info(classes: int, shape: tuple, mean, std, eps: float) -> DatasetInfo:
    return DatasetInfo(name=GIVEN, num_classes=classes, image_shape=shape, mean=tuple(mean), std=tuple(std),
                       linf_eps=float(eps), l2_eps=float(eps), hflip=False, crop_padding=default_crop_padding(shape[1]),
                       class_names=tuple(f"class_{i}" for i in range(classes)))


def _evaluate_given(run_dir: Path, cfg, test, info: DatasetInfo, quiet: bool) -> dict:
    """The protocol (``eval.*`` of the run's config) on the best checkpoint, on in-memory test data."""
    from ..checkpoints import load_model
    from ..device import resolve_device
    from ..evaluate import evaluate, format_report, parse_attacks
    from ..files import write_json_atomic
    from ..models import ModelCodePolicy
    from ..threat import evaluation_eps

    tx, ty = _as_tensors(test, "test")
    if tuple(tx.shape[1:]) != tuple(info.image_shape):
        raise ValueError(f"test: images {tuple(tx.shape[1:])}, the training images are {tuple(info.image_shape)}")
    device = resolve_device(cfg.train.device)
    model, _ = load_model(run_dir / "best", device, ModelCodePolicy(trust_all=True))  # the model this call trained
    n = len(tx) if cfg.eval.n is None else min(cfg.eval.n, len(tx))
    x = tx[:n].float() / 255.0 if tx.dtype == torch.uint8 else tx[:n]
    report = evaluate(model, x, ty[:n], dataset=GIVEN, eps=evaluation_eps(cfg), norm=cfg.attack.norm,
                      attacks=parse_attacks(cfg.eval.attacks), batch_size=cfg.eval.batch_size, aa_n=cfg.eval.aa_n,
                      seed=cfg.train.seed, quiet=quiet, n_total=len(tx))
    if not quiet:
        print(format_report(report), flush=True)
    result = report.to_json()
    write_json_atomic(run_dir / "eval.json", result)
    return result
