"""Run directories and resume: where a run lives, what it records when it starts, and what a
resume may change.

A new run gets its directory (:func:`prepare_run`: ``config.yaml``, an empty ``metrics.jsonl``;
rank 0 makes it, every rank uses it). A resume reads the run's ``config.yaml``
(:func:`resume_config`), checks that only the fields of :data:`RESUME_CHANGEABLE` changed and that
the epochs and steps never go below those trained, and records each change in ``config-history.yaml``
once every check has passed: a refused resume changes nothing.
What a run fixes when it starts is written into its config: a file dataset's mean and std
(:func:`with_data_statistics`), the eps of validation (:func:`with_validation_eps`), the data
directory as an absolute path, the validation hold-out and an npz label mapping
(:func:`with_data_record`); the fingerprint of its training and validation data goes to ``data-fingerprint.json``
(:func:`record_or_check_data`), and a resume on other data is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import distributed
from ..checkpoints import CheckpointError, read_checkpoint_meta
from ..config import (Config, ConfigError, apply_override, config_from_dict, config_to_dict, data_source,
                      evaluation_eps, method_label, save_config, upgrade_flat_method)
from ..data.source import default_val_size, fingerprint_difference, training_labels, with_statistics
from ..files import atomic_write_bytes


def default_run_dir(cfg: Config) -> Path:
    """runs/<dataset>-<method>-seed<seed>-<time>: a new directory for every run, never a clash."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.data.dataset}-{method_label(cfg)}-seed{cfg.train.seed}-{stamp}"


def prepare_run(cfg: Config, out: str | Path | None = None) -> Path:
    run_dir = Path(out or cfg.train.out or default_run_dir(cfg))
    if (run_dir / "last.safetensors").exists():
        raise CheckpointError(f"{run_dir}: already holds a run; use --resume {run_dir} or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text("")
    return run_dir


def load_run_config(run_dir: str | Path) -> Config:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no config.yaml, not a run directory")
    return config_from_dict(with_old_trh_control(yaml.safe_load(path.read_text())))


def with_old_trh_control(d: dict) -> dict:
    """A run directory's raw config with ``taylor: trh`` read as what it trained with. Before issue 43
    ``taylor="trh"`` was the adversarial cross-entropy's trace alone, now ``"adv-trace"``; ``"trh"`` is
    now TrH of the base objective. A run records every RAT argument (the class's defaults filled in),
    so a run directory written since has ``trh_coef`` beside ``taylor``, and one without it (nested or
    the flat form of earlier releases) is from before: it resumes, and is compared, as ``adv-trace``."""
    method = upgrade_flat_method(d).get("method") if isinstance(d, dict) else None
    rat = method.get("rat") if isinstance(method, dict) else None
    if not isinstance(rat, dict) or rat.get("taylor") != "trh" or "trh_coef" in rat:
        return d
    return {**d, "method": {**method, "rat": {**rat, "taylor": "adv-trace"}}}


# What a resume may change: how long the run goes on, how often it saves, how it is validated,
# evaluated and where its data lie; never what a training step computes (model, method, data,
# seed, batch, optimizer, attack, precision), since the saved state would then continue a
# different run.
# The validation set-up (train.val_eps, train.val_n) is the run's own: a best chosen at one eps or on
# one set of images cannot be compared with epochs validated otherwise; eval.* (the final evaluation)
# may still change.
RESUME_CHANGEABLE = ("train.epochs", "train.max_steps", "train.budget_s", "train.time_budget_s",
                     "train.checkpoint_every_s", "train.val_every", "train.collapse_margin", "train.collapse_epochs",
                     "data.data_dir", "eval.*")
HISTORY_FILE = "config-history.yaml"
DATA_FINGERPRINT_FILE = "data-fingerprint.json"
PREEMPTED_FILE = "preempted"


def config_changes(old: Config, new: Config) -> dict[str, tuple]:
    """``{"section.key": (old, new)}`` for every field that differs."""
    a, b = config_to_dict(old), config_to_dict(new)
    return {f"{sec}.{key}": (a[sec][key], b[sec][key]) for sec in a for key in a[sec] if a[sec][key] != b[sec][key]}


def check_resume_changes(changes: dict[str, tuple]) -> None:
    """ConfigError naming the first changed field a resume may not change."""
    for name, (old, new) in changes.items():
        if name not in RESUME_CHANGEABLE and f"{name.split('.')[0]}.*" not in RESUME_CHANGEABLE:
            raise ConfigError(f"{name}: cannot change when resuming (the run has {old!r}, asked {new!r}); "
                              f"a resume may change {', '.join(RESUME_CHANGEABLE)}. Start a new run instead "
                              f"(train.init_from=RUN_DIR starts it from this run's weights)")


def resume_config(run_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's config.yaml with ``section.key=value`` overrides of the fields a resume may
    change (:data:`RESUME_CHANGEABLE`); any other change is a ConfigError naming the field."""
    old = with_validation_eps(load_run_config(run_dir))  # a run from before val_eps: the eps it validated at
    d = config_to_dict(old)
    for override in overrides:
        apply_override(d, override)
    cfg = config_from_dict(d)
    check_resume_changes(config_changes(old, cfg))
    return cfg


def with_validation_eps(cfg: Config) -> Config:
    """``cfg`` with ``train.val_eps`` recorded: the eps validation runs at for the whole run (the
    evaluation eps the run started with), so a later change of ``eval.eps`` moves the final
    evaluation only."""
    if cfg.train.val_eps is not None:
        return cfg
    d = config_to_dict(cfg)
    d["train"]["val_eps"] = evaluation_eps(cfg)
    return config_from_dict(d)


def same_run(recorded: Config, cfg: Config) -> bool:
    """Whether a run directory's ``recorded`` config is the run ``cfg`` asks for: equal, except for
    what a run fills in when it starts where ``cfg`` leaves it open (``train.val_eps``, a file
    dataset's ``data.mean``/``data.std``, ``data.val_size``, ``data.label_map``, a user model's
    ``model.head``, ``attack.precision: auto``'s choice, and a budget's plan: ``train.max_steps``,
    ``eval.aa_n``), and a data directory recorded absolute that is the one ``cfg`` names relative
    to this directory."""
    a, b = config_to_dict(recorded), config_to_dict(with_recorded_data(cfg, recorded))
    for section, key in (("train", "val_eps"), ("data", "mean"), ("data", "std"), ("model", "head")):
        if b[section][key] is None:
            a[section][key] = None
    if b["attack"]["precision"] == "auto":
        a["attack"]["precision"] = "auto"
    if b["train"]["budget_s"] is not None and b["train"]["max_steps"] is None:
        a["train"]["max_steps"], a["eval"]["aa_n"] = None, b["eval"]["aa_n"]
    return a == b


def _absolute(data_dir: str) -> str:
    return str(Path(data_dir).expanduser().resolve())


def with_data_record(cfg: Config) -> Config:
    """``cfg`` with what a new run fixes about its data when it starts, recorded in its config.yaml:
    ``data.data_dir`` as an absolute path (``rat eval RUN`` finds the files from any directory; a
    run recorded relative is still read from the current directory), ``data.val_size`` where not set
    (your own data: a tenth of the training split, at most 5,000; a built-in dataset: 5,000, as
    before) and, for ``data.labels=remap``, the npz labels of the classes (``data.label_map``)."""
    d = config_to_dict(cfg)
    data = d["data"]
    if data["data_dir"] is not None:
        data["data_dir"] = _absolute(data["data_dir"])
    src = data_source(cfg)
    # your own files: one line, before the run directory exists, for labels that skip numbers or one class
    n, present = training_labels(src) if src.from_files else (None, ())
    if data["val_size"] is None:
        data["val_size"] = default_val_size(src.dataset, n)
    if data["labels"] == "remap" and data["label_map"] is None:
        data["label_map"] = list(present)
    return config_from_dict(d)


def with_recorded_data(cfg: Config, recorded: Config) -> Config:
    """``cfg`` (a resume's) with what the run filled in when it started where ``cfg`` leaves it open
    (``data.val_size``, ``data.label_map``), and its data directory as recorded when it names the same
    place (else absolute: a resume on moved files records where they now are)."""
    d, r = config_to_dict(cfg), recorded.data
    data = d["data"]
    if data["val_size"] is None:
        data["val_size"] = r.val_size
    if data["label_map"] is None and data["labels"] == r.labels:
        data["label_map"] = r.label_map
    if data["data_dir"] is not None:
        same = r.data_dir is not None and _absolute(r.data_dir) == _absolute(data["data_dir"])
        data["data_dir"] = r.data_dir if same else _absolute(data["data_dir"])
    return config_from_dict(d)


def validation_eps(cfg: Config) -> float:
    """The eps of validation: :func:`ratkit.threat.validation_eps`."""
    from ..threat import validation_eps as radius

    return radius(cfg)


def check_resume_epochs(run_dir: Path, cfg: Config) -> None:
    """ConfigError when a resume asks for fewer epochs or steps than the run has trained, a started
    epoch counting as trained: the weights would keep the extra steps, so the run could never be what
    its config says."""
    if not (Path(run_dir) / "last.safetensors").exists():
        return  # no last yet: the resume starts the run from its config
    meta = read_checkpoint_meta(Path(run_dir) / "last")  # the header only: restoring reads the tensors
    progress = meta.get("progress") or {}
    done, into = int(progress.get("epoch") or 0), int(progress.get("step_in_epoch") or 0)
    steps, started = int(progress.get("global_step") or 0), done + (into > 0)
    if cfg.train.epochs < started:
        trained = f"{done} epochs" + (f" and {into} steps of epoch {done + 1}" if into else "")
        raise ConfigError(f"train.epochs: the run has already trained {trained}, {cfg.train.epochs} asked; "
                          f"a resume can only go on (--epochs {started} or more)")
    if cfg.train.max_steps is not None and cfg.train.max_steps < steps:
        raise ConfigError(f"train.max_steps: the run has already taken {steps} steps, {cfg.train.max_steps} asked; "
                          f"a resume can only go on (train.max_steps={steps} or more, or null)")


def check_recorded_data(run_dir: Path, now: dict) -> None:
    """ConfigError, naming what changed, when the run recorded a fingerprint of its training and
    validation data and ``now`` (``{"train": ..., "val": ...}``) differs; writes nothing."""
    path = run_dir / DATA_FINGERPRINT_FILE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    for split in ("train", "val"):
        problem = fingerprint_difference(recorded.get(split, {}), now[split], split)
        if problem is not None:
            raise ConfigError(f"data: {problem}; a resume must train on the run's own data "
                              f"(the same files may move: --data-dir, RAT_DATA_DIR)")


def record_or_check_data(run_dir: Path, now: dict, resume: bool, main: bool) -> None:
    """Record the fingerprint of the training and validation data (``data-fingerprint.json``) when
    a run starts, and refuse a resume whose data differ (other files under ``--data-dir`` or
    ``RAT_DATA_DIR``), naming what changed. A run from before the record gets one now. ``now``:
    ``{"train": ..., "val": ...}`` fingerprints; ``main``: whether this rank writes."""
    path = run_dir / DATA_FINGERPRINT_FILE
    if resume and path.is_file():
        check_recorded_data(run_dir, now)
        return
    if main:
        atomic_write_bytes(path, (json.dumps(now, indent=1) + "\n").encode())


def record_config_changes(run_dir: Path, cfg: Config, changes: dict[str, tuple]) -> None:
    """Write the changed config to config.yaml (what the run now is) and append the change to
    ``config-history.yaml`` (a list of ``{time, changes: {field: {from, to}}}``), so a reader can
    tell which epochs ran under which settings."""
    import yaml

    path = run_dir / HISTORY_FILE
    history = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    history.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
    atomic_write_bytes(path, yaml.safe_dump(history, sort_keys=False).encode())
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False).encode())


def resumed_run_dir(cfg: Config, run_dir: str | Path, rank: distributed.Rank, quiet: bool) -> Path:
    """The run directory of a resume, after checking and recording the config's changes."""
    return record_resume(cfg, run_dir, check_resume(cfg, run_dir), rank, quiet)


def check_resume(cfg: Config, run_dir: str | Path) -> dict[str, tuple]:
    """The changes a resume under ``cfg`` makes to the run's config, after checking that a resume may
    make them and goes on from what the run trained (ConfigError otherwise); writes nothing."""
    run_dir = Path(run_dir)  # cfg has its validation eps recorded (train)
    changes = config_changes(with_validation_eps(load_run_config(run_dir)), cfg)
    check_resume_changes(changes)
    check_resume_epochs(run_dir, cfg)
    return changes


def record_resume(cfg: Config, run_dir: str | Path, changes: dict[str, tuple], rank: distributed.Rank,
                  quiet: bool) -> Path:
    """Record an accepted resume: its config ``changes`` (:func:`check_resume`), and no ``preempted``."""
    run_dir = Path(run_dir)
    if rank.is_main:
        if changes:
            record_config_changes(run_dir, cfg, changes)
            if not quiet:
                print("resuming with " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()),
                      flush=True)
        (run_dir / PREEMPTED_FILE).unlink(missing_ok=True)
    return run_dir


def new_run_dir(cfg: Config, run_dir: str | Path | None, rank: distributed.Rank) -> Path:
    """Rank 0 prepares the run directory; every rank then uses that one."""
    run_dir = [prepare_run(cfg, run_dir) if rank.is_main else None]
    if rank.distributed:
        torch.distributed.broadcast_object_list(run_dir, src=0)
    return Path(run_dir[0])


def with_data_statistics(cfg: Config) -> Config:
    """``cfg`` with a file dataset's per-channel mean and std, computed from its training split when
    not given, written into ``data.mean``/``data.std``: recorded in the run's config.yaml and its
    checkpoints, so every later command normalises identically without reading the data again."""
    src = data_source(cfg)
    if not src.from_files or (src.mean is not None and src.std is not None):
        return cfg
    filled = with_statistics(src)
    d = config_to_dict(cfg)
    d["data"]["mean"], d["data"]["std"] = list(filled.mean), list(filled.std)
    return config_from_dict(d)
