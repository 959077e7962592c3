"""A run's start: building its method, model and optimizer from its config, and what is checked,
planned and recorded before the trainer is built (:func:`~ratkit.train.loop.train`), so that a
user's mistake is found before the run directory changes, not deep in the loop.

A new run fills in what its config leaves open (the data's statistics and record, the validation
radius), checks its test split and a user's model on one batch, plans a ``train.budget_s``, and
makes its run directory; a resume reads what the run recorded and checks what the resume changes.
:func:`ratkit.fit` builds its own model and data, so it starts through :func:`built_start`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import distributed
from ..checkpoints import CheckpointError, checkpoint_path, check_model_fits_data, read_checkpoint
from ..compile import print_line
from ..config import Config, ConfigError, data_source, method_settings, with_resolved_precision
from ..data.source import source_info
from ..device import resolve_device
from ..methods import Method, compose_method
from ..models import build_from_spec, model_kwargs_for, model_spec
from ..models.user import (DATA_KWARGS, ModelCodePolicy, UntrustedModelCode, build_user_model, is_user_model,
                           policy_or_default)
from ..preflight import check_run_start, check_test_split, exact_head_in_awp_line, with_head
from .budget import plan_run, write_plan
from .rundir import (check_resume, default_run_dir, load_run_config, new_run_dir, with_data_record,
                     with_data_statistics, with_recorded_data, with_validation_eps)


# ----------------------------------------------------------------------------- building


def build_method(cfg: Config) -> Method:
    """Base method from the config, wrapped in RAT and/or AWP as asked: AWP(RAT(base)).

    Example: ``build_method(load_config("fmnist-cpu"))`` is RAT(TRADES) with the preset's settings."""
    return compose_method(**method_settings(cfg))


def model_spec_from_config(cfg: Config, info) -> dict:
    """The spec of the built-in model a run builds: the config's name and kwargs on the dataset's
    shape (a user's ``module:callable`` model gets its spec when it is built, head included)."""
    return model_spec(cfg.model.name, **model_kwargs_for(cfg.model.name, info, **cfg.model.kwargs))


def build_model_from_config(cfg: Config, info, model_code: ModelCodePolicy | None = None) -> tuple[nn.Module, dict]:
    """The run's model and its spec. A user's ``module:callable`` is imported only if ``model_code``
    allows it (the command line named it, or --trust-model-code); the error says how to allow it."""
    if is_user_model(cfg.model.name):
        check_model_code(cfg, model_code)
        try:
            return build_user_model(cfg.model.name, cfg.model.kwargs, num_classes=info.num_classes,
                                    image_shape=info.image_shape, head=cfg.model.head, mean=info.mean, std=info.std)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model: {exc}") from None
    spec = model_spec_from_config(cfg, info)
    try:
        return build_from_spec(spec), spec
    except (ValueError, TypeError) as exc:  # a constructor's own refusal, e.g. an unknown keyword
        raise ConfigError(f"model.kwargs: {exc}") from None


def check_model_code(cfg: Config, model_code: ModelCodePolicy | None) -> None:
    """ConfigError unless ``model_code`` allows importing the run's ``module:callable`` model."""
    try:
        policy_or_default(model_code).check(cfg.model.name, "the run's config")
    except UntrustedModelCode as exc:
        raise ConfigError(str(exc)) from None


def _with_recorded_head(cfg: Config, run_dir) -> Config:
    """A resume's ``cfg`` with the head of a user's model that its run found and recorded when it
    started, where ``cfg`` leaves it open (a study's grid, a caller's config from before the start)."""
    if cfg.model.head is not None or not is_user_model(cfg.model.name) or run_dir is None:
        return cfg
    return with_head(cfg, load_run_config(run_dir).model.head)


def initial_weights(cfg: Config, model_code: ModelCodePolicy | None = None) -> dict[str, Tensor]:
    """The model weights of ``train.init_from`` (CPU tensors), after checking that they were
    trained for the model this run builds: same name and kwargs (classes, channels,
    normalisation included), else the weights would mean something else or not load at all."""
    path = checkpoint_path(cfg.train.init_from)
    try:
        tensors, meta = read_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    info = source_info(data_source(cfg))
    try:  # other images or classes first: the clearest reason the weights cannot be used
        check_model_fits_data(meta, info, f"train.init_from: {path}", cfg.data.dataset)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    theirs = meta.get("model") or {}
    if is_user_model(cfg.model.name):
        ours = build_model_from_config(cfg, info, model_code)[1]
    else:
        ours = model_spec_from_config(cfg, info)
    if theirs.get("name") != ours["name"]:
        raise ConfigError(f"train.init_from: {path} holds a {theirs.get('name')!r} model, this run builds "
                          f"{ours['name']!r}; the model (name and kwargs) must be the same")
    a, b = theirs.get("kwargs") or {}, ours["kwargs"]
    told = set(DATA_KWARGS) - set(a)  # what the data tells a callable, absent from an older checkpoint: checked above
    differ = [f"{k} {a.get(k)!r} (this run: {b.get(k)!r})" for k in sorted((set(a) | set(b)) - told)
              if a.get(k) != b.get(k)]
    if differ:
        raise ConfigError(f"train.init_from: {path} holds a {ours['name']} with " + ", ".join(differ)
                          + "; the model (name and kwargs) must be the same")
    return {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay)



# ----------------------------------------------------------------------------- the start


@dataclass
class RunStart:
    """What a run's start decided, for the trainer: the config as the run records it, its directory,
    the model code it may import, and what the trainer does with them once it is built."""

    cfg: Config
    run_dir: Path
    resume: bool
    model_code: ModelCodePolicy | None = None
    created: bool = False  # the run directory was made now: removed again if the start fails
    changes: dict = field(default_factory=dict)  # what a resume changes, recorded once every check has passed
    start_lines: list[str] = field(default_factory=list)  # notices printed before the first step
    initial: dict[str, Tensor] | None = None  # the weights of train.init_from


def start_process(cfg: Config, quiet: bool) -> tuple[Config, distributed.Rank]:
    """``cfg`` with ``attack.precision: auto`` resolved to what this device computes natively (recorded
    in config.yaml, so that a resume continues with the precision the run started with, on any
    machine), and this process's rank (joining torchrun's process group)."""
    device = resolve_device(cfg.train.device)
    rank = distributed.init_from_environment(device.type)
    cfg, precision_line = with_resolved_precision(cfg, device)
    if rank.is_main:
        print_line(precision_line, quiet)  # a warning goes to stderr, quiet or not
    return cfg, rank


def checked_start(cfg: Config, run_dir: str | Path | None, rank: distributed.Rank, *, resume: bool, quiet: bool,
                  model_code: ModelCodePolicy | None, evaluation: str, started: float | None) -> RunStart:
    """The start of :func:`~ratkit.train.loop.train`: every check that reads the data or builds the model
    from the config, and a new run's budget plan, before the run directory is made or changed."""
    if resume:
        if is_user_model(cfg.model.name):
            check_model_code(cfg, model_code)  # before anything in the run directory changes
        cfg = _recorded(cfg, run_dir)
        # the evaluation after training reads the test split: checked before the run goes on
        start_lines = [w for w in [check_test_split(data_source(cfg), evaluation)] if w]
        return _resumed(cfg, run_dir, model_code, start_lines)
    model_code = policy_or_default(model_code, cfg.model.name)  # a new run's config is the caller's
    cfg = with_data_statistics(cfg)  # before config.yaml is written: the run records them
    cfg, initial = _new_run_config(cfg, model_code)
    # the test split, and a user's model on one batch: before the run directory
    cfg, start_lines = check_run_start(cfg, lambda c, info: build_model_from_config(c, info, model_code),
                                       evaluation=evaluation)
    plan = None
    if cfg.train.budget_s is not None:
        if rank.distributed:
            if rank.is_main:
                print("warning: train.budget_s is not planned under torchrun; the run trains as configured",
                      file=sys.stderr, flush=True)
        else:
            plan = plan_run(cfg, evaluation=evaluation, build=lambda info: (  # before the run directory
                build_model_from_config(cfg, info, model_code)[0], build_method(cfg),
                lambda model: build_optimizer(cfg, model)), started=started)
            cfg = plan.apply(cfg)
            if not quiet:
                print(plan.summary(), flush=True)
    start = _new_run(cfg, run_dir, rank, model_code, initial, start_lines)
    if plan is not None:
        write_plan(start.run_dir, plan)
    return start


def built_start(cfg: Config, run_dir: str | Path | None, rank: distributed.Rank, *, resume: bool) -> RunStart:
    """The start of a run whose model and data the caller built (:func:`ratkit.fit`): its config
    records them, and the caller checked them as it built them; no plan."""
    if resume:
        return _resumed(_recorded(cfg, run_dir), run_dir, None, [])
    model_code = policy_or_default(None, cfg.model.name)  # the caller's own config
    cfg, initial = _new_run_config(cfg, model_code)
    return _new_run(cfg, run_dir, rank, model_code, initial, [])


def _recorded(cfg: Config, run_dir) -> Config:
    """A resume's ``cfg`` with the data its run recorded and the validation radius."""
    return with_validation_eps(with_recorded_data(cfg, load_run_config(run_dir)))


def _resumed(cfg: Config, run_dir, model_code: ModelCodePolicy | None, start_lines: list[str]) -> RunStart:
    cfg = _with_recorded_head(cfg, run_dir)
    changes = check_resume(cfg, run_dir)  # recorded once every check has passed: a refused resume changes nothing
    return RunStart(cfg, Path(run_dir), resume=True, model_code=model_code, changes=changes, start_lines=start_lines)


def _new_run_config(cfg: Config, model_code: ModelCodePolicy) -> tuple[Config, dict[str, Tensor] | None]:
    """A new run's ``cfg`` with its data record and validation radius, and the weights of
    ``train.init_from``, checked before the run directory is made."""
    cfg = with_validation_eps(with_data_record(cfg))
    return cfg, initial_weights(cfg, model_code) if cfg.train.init_from is not None else None


def _new_run(cfg: Config, run_dir, rank: distributed.Rank, model_code: ModelCodePolicy, initial,
             start_lines: list[str]) -> RunStart:
    """A new run's directory made (refused if it holds a run), with the warning of a method set up
    to collapse after the start lines (:func:`~ratkit.preflight.exact_head_in_awp_line`)."""
    planned = Path(run_dir or cfg.train.out or default_run_dir(cfg))
    created = not planned.exists()
    start_lines = start_lines + [w for w in [exact_head_in_awp_line(cfg)] if w]
    return RunStart(cfg, new_run_dir(cfg, planned, rank), resume=False, model_code=model_code, created=created,
                    start_lines=start_lines, initial=initial)
