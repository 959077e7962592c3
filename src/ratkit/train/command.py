"""``rat train``'s work: the run's config from the command line's flags, the training, how it
ended (an exit code and one line), and the final evaluation. :mod:`ratkit.cli` parses the flags
and hands them here."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .. import distributed
from ..config import load_config
from ..device import resolve_device_flag
from ..exits import EXIT_PREEMPTED, UserError
from ..models import ModelCodePolicy
from ..preemption import Preempted
from ..threat import STEP_FOLLOWS_EPS
from . import (PREEMPTED_FILE, TrainingInterrupted, TrainingPreempted, TrainingStopped, evaluate_run, load_run_config,
               resume_config, train)
from .budget import parse_budget


def train_command(args, model_code: ModelCodePolicy | None = None, started: float | None = None) -> int:
    """``rat train``: ``model_code`` is what the command line allows importing (``--model``,
    ``--trust-model-code``), which applies to a resumed run's recorded model. A preemption at any
    moment exits 75 with a ``preempted`` file, resumable: at a step boundary in the loop (the
    trainer), at once during start-up and the final evaluation (:func:`ratkit.cli.main` catches the
    signals before anything heavy is imported). ``started``:
    when the job began (``time.monotonic()``; default now), where a budget counts from."""
    started = started if started is not None else time.monotonic()
    if args.resume:
        if args.config:
            raise UserError("--resume continues a run with its own config.yaml; --config does not apply "
                            "(change what a resume may change with --set)")
        cfg = resume_config(args.resume, train_overrides(args))
        run_dir = args.resume
        policy = model_code
    else:
        cfg = load_config(args.config, train_overrides(args))
        run_dir, policy = None, None  # a new run: its config is the user's own
    resolve_device_flag(cfg.train.device)
    clock = time.perf_counter()
    try:
        evaluation = "none" if args.no_eval else "full" if args.full_eval else "preset"
        run_dir = train(cfg, run_dir, resume=bool(args.resume), quiet=args.quiet, model_code=policy,
                        evaluation=evaluation, started=started)
    except TrainingStopped as exc:
        print(f"rat train: stopped: {exc}", file=sys.stderr)
        return 1
    except TrainingPreempted as exc:
        if distributed.current().is_main:
            print(f"rat train: stopped by {exc.signal_name}; progress saved. Continue with: "
                  f"rat train --resume {exc.run_dir} (exit {EXIT_PREEMPTED}: preempted, resumable)", file=sys.stderr)
        return EXIT_PREEMPTED
    except TrainingInterrupted as exc:
        print(f"rat train: interrupted; progress saved. Continue with: rat train --resume {exc.run_dir}",
              file=sys.stderr)
        return 130
    main = distributed.current().is_main  # under torchrun rank 0 reports; every rank evaluates its shard
    if main:
        print(f"training finished in {time.perf_counter() - clock:.0f} s; run directory: {run_dir}", flush=True)
    if not args.no_eval:
        cfg = load_run_config(run_dir)  # as the run recorded it (a file dataset's statistics included)
        try:  # a preemption here keeps the finished batches: --resume finishes the evaluation
            evaluate_run(run_dir, cfg, full=args.full_eval, quiet=args.quiet, model_code=policy)
        except Preempted as exc:
            exc.run_dir = run_dir
            raise
    if main:
        print(f"total wall time {time.perf_counter() - clock:.0f} s", flush=True)
    return 0


def _budget_seconds(text: str) -> float | None:
    try:
        return parse_budget(text)
    except ValueError as exc:
        raise UserError(f"--budget: {exc}") from None


def train_overrides(args) -> list:
    """The common flags as typed ``(section.key, value)`` overrides (never re-parsed as YAML),
    then the ``--set section.key=value`` strings (parsed as YAML), which win."""
    flags = {"method": "method.name", "dataset": "data.dataset", "model": "model.name", "epochs": "train.epochs",
             "batch_size": "train.batch_size", "train_subset": "data.train_subset", "seed": "train.seed",
             "out": "train.out", "data_dir": "data.data_dir", "device": "train.device", "rat": "method.rat",
             "awp": "method.awp", "norm": "attack.norm", "eps": "data.eps", "compile": "train.compile"}
    overrides = []
    if (args.model is not None or args.dataset is not None) and not args.resume:
        file = load_config(args.config)
        if args.model is not None and file.model.name != args.model:  # the file's kwargs and head were for its model
            overrides += [("model.kwargs", {}), ("model.head", None)]
        if args.dataset is not None and file.data.dataset != args.dataset:  # its val_size was for its own data
            overrides.append(("data.val_size", None))  # null: chosen to fit the data when the run starts
    for attr, key in flags.items():
        value = getattr(args, attr)
        if value is not None:
            overrides.append((key, value))
    if args.budget is not None:  # "none" gives null: no plan
        overrides.append(("train.budget_s", _budget_seconds(args.budget)))
    if args.eps is not None and not args.resume:
        overrides.append(STEP_FOLLOWS_EPS)
    return overrides + list(args.set)


def preempted_outside_the_loop(exc: Preempted) -> int:
    """``rat train`` stopped by a notice outside the training loop (start-up, the final evaluation):
    the ``preempted`` file where the run has a directory, one line, exit 75."""
    run_dir = exc.run_dir
    if run_dir is not None and (Path(run_dir) / "config.yaml").is_file() and distributed.current().is_main:
        (Path(run_dir) / PREEMPTED_FILE).write_text(f"{exc.signal_name} outside the training loop (start-up or "
                                                    f"final evaluation); continue with: rat train --resume {run_dir}\n")
    where = f"; continue with: rat train --resume {run_dir}" if run_dir is not None else "; nothing was saved yet"
    print(f"rat train: stopped by {exc.signal_name}{where} (exit {EXIT_PREEMPTED}: preempted, resumable)",
          file=sys.stderr)
    return EXIT_PREEMPTED
