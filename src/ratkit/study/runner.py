"""Running a grid: every (configuration, seed) trained, evaluated and measured once, resumably.

* a run's checkpoints live in ``OUT/<config>-seed<s>/`` (large files, never committed);
* when it is trained, evaluated and measured, its record is written to ``RESULTS/<config>-seed<s>.json``
  and handed to ``on_result(paths, message)`` (the command line's ``--commit`` commits it there);
* a run whose result file exists is skipped; a run with a ``last`` checkpoint is resumed
  exactly (the trainer's resume); anything else starts fresh. So the study survives being
  stopped, and on a new machine it picks up from the committed result files;
* a result file that lacks a measurement the grid now asks for gets just that measurement added
  from the run directory, when its checkpoint is still there (:mod:`.measurements`); nothing is
  retrained or re-evaluated;
* one process at a time works on a run: it holds ``OUT/<config>-seed<s>.lock`` (:mod:`.lock`).
  A second ``rat study`` on the same ``OUT`` leaves a run it finds in use to the process that has
  it and, before it aggregates, waits until that process is done with it; with
  ``--no-aggregate`` it exits 73 instead (``rat study --only NAME --seeds S``, as every executor
  runs a run: the executor then waits).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ..config import config_to_dict
from ..files import write_json_atomic
from .grid import StudyError, StudyGrid, run_config, run_key
from .lock import EXIT_IN_USE, RunInUse, hold_run, wait_for_runs
from .measurements import add_measurement, measurement_checkpoint, missing_measurements, unavailable_measurements
from .records import report_accuracy
from .report import write_aggregate

Log = Callable[[str], None]
# called with the result files just written and a one-line description, e.g. to commit them
OnResult = Callable[[list[Path], str], None]


def selected_runs(grid: StudyGrid, only: list[str] | None) -> list[str]:
    """The configurations to run: all of the grid's, or those ``only`` names (each must be in the grid)."""
    names = list(grid.runs) if only is None else only
    missing = [n for n in names if n not in grid.runs]
    if missing:
        raise StudyError(f"--only: {missing} not in the grid's runs {list(grid.runs)}")
    return names


def _training_complete(run_dir: Path, epochs: int) -> bool:
    from ..checkpoints import read_checkpoint_meta

    if not (run_dir / "last.safetensors").exists():
        return False
    return read_checkpoint_meta(run_dir / "last")["progress"]["epoch"] >= epochs


def run_one(grid: StudyGrid, name: str, seed: int, out_dir: Path, *, quiet: bool = True, log: Log = print) -> dict:
    """Train (or resume), evaluate and measure one run; returns its result record.

    The grid file is the user's own: a model it names (``model.name=module:callable``) is allowed
    on a resume as on the first start. The run resumed is the grid's (checked), under the grid's
    config, not the run directory's."""
    from ..models import policy_or_default
    from ..train import load_run_config, same_run, train

    cfg = run_config(grid, name, seed)
    run_dir = out_dir / run_key(name, seed)
    if (run_dir / "last.safetensors").exists():
        if not same_run(load_run_config(run_dir), cfg):
            raise StudyError(f"{run_dir}: holds a run with a different config; move it away or use another --out")
        if not _training_complete(run_dir, cfg.train.epochs):
            log(f"{run_key(name, seed)}: resuming")
            train(cfg, run_dir, resume=True, quiet=quiet, model_code=policy_or_default(None, cfg.model.name))
    else:
        log(f"{run_key(name, seed)}: training")
        train(cfg, run_dir, quiet=quiet)
    return record_run(grid, name, seed, run_dir, quiet=quiet, log=log)


def _history_fields(history: list[dict]) -> dict:
    """What a record keeps of ``metrics.jsonl`` besides the epoch count: training time and the per-epoch rows."""
    return {"train_seconds": sum(r.get("train_seconds", 0.0) for r in history),
            "seconds_per_epoch": statistics.mean(r["train_seconds"] for r in history) if history else None,
            "history": [{k: v for k, v in r.items() if k in ("epoch", "train_loss", "val_clean", "val_pgd20",
                                                              "train_seconds", "warning")} for r in history]}


def record_run(grid: StudyGrid, name: str, seed: int, run_dir: Path, *, quiet: bool = True, log: Log = print) -> dict:
    """Evaluate and measure one trained run (its ``best`` checkpoint and ``metrics.jsonl``): the result record.

    Needs only ``best.*`` and ``metrics.jsonl``, so a run trained elsewhere can be evaluated on
    another machine without its ``last`` checkpoint (the record says where the evaluation ran);
    a grid's ``last`` is then left out, and added later when the checkpoint is there."""
    from ..device import environment, resolve_device
    from ..train import evaluate_run

    cfg = run_config(grid, name, seed)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    started = time.perf_counter()
    log(f"{run_key(name, seed)}: evaluating")
    report = evaluate_run(run_dir, grid.eval.apply(cfg), quiet=quiet)
    record = {
        "config": name, "seed": seed, "grid": grid.name, "overrides": [*grid.overrides, *grid.runs[name]],
        "best_epoch": report["best_epoch"], "epochs": len(history), **_history_fields(history),
        "accuracy": report_accuracy(report), "eval_seconds": time.perf_counter() - started,
        # where the evaluation ran (training too, unless it was resumed elsewhere): seconds compare only on one machine
        "machine": environment(str(resolve_device(cfg.train.device))),
        "config_full": config_to_dict(cfg),
    }
    missing = missing_measurements(grid, record)
    absent = unavailable_measurements(missing, run_dir)
    if absent:
        log(f"{run_key(name, seed)}: {run_dir} has no last checkpoint; {', '.join(absent)} left out")
    for kind in missing:
        if kind not in absent:
            add_measurement(grid, record, kind, run_dir, quiet=quiet, log=log)
    return record


def _complete_record(grid: StudyGrid, key: str, record: dict, run_dir: Path, *, quiet: bool,
                     log: Log) -> str | None:
    """Add to an existing record the measurements it lacks that ``run_dir`` can give; the commit
    message, or None when nothing was added."""
    missing = missing_measurements(grid, record)
    if not missing:
        log(f"{key}: complete, skipped")
        return None
    absent = unavailable_measurements(missing, run_dir)
    if absent:
        checkpoints = " or ".join(sorted({measurement_checkpoint(k) for k in absent}))
        rest = "kept as is" if absent == missing else "added only the rest"
        log(f"{key}: lacks {', '.join(absent)}, and {run_dir} has no {checkpoints} checkpoint; {rest}")
    missing = [k for k in missing if k not in absent]
    for kind in missing:
        add_measurement(grid, record, kind, run_dir, quiet=quiet, log=log)
    return f"study {grid.name}: {', '.join(missing)} of {key}" if missing else None


def _study_run(grid: StudyGrid, name: str, seed: int, out_dir: Path, result: Path, *, evaluate_only: bool,
               quiet: bool, log: Log) -> tuple[dict, str] | None:
    """One (configuration, seed) of ``run_study``: its new or completed record and the commit message,
    or None when there is nothing to write."""
    key = run_key(name, seed)
    if result.exists():
        record = json.loads(result.read_text())
        message = _complete_record(grid, key, record, out_dir / key, quiet=quiet, log=log)
        return None if message is None else (record, message)
    if evaluate_only:
        if not (out_dir / key / "best.safetensors").exists():
            log(f"{key}: no trained run in {out_dir / key}; skipped (evaluate only)")
            return None
        return record_run(grid, name, seed, out_dir / key, quiet=quiet, log=log), f"study {grid.name}: result of {key}"
    return run_one(grid, name, seed, out_dir, quiet=quiet, log=log), f"study {grid.name}: result of {key}"


def run_study(grid: StudyGrid, out_dir: str | os.PathLike, results_dir: str | os.PathLike, *,
              seeds: list[int] | None = None, only: list[str] | None = None, on_result: OnResult | None = None,
              quiet: bool = True, log: Log = print, aggregate_after: bool = True,
              evaluate_only: bool = False) -> dict | None:
    """Every (configuration, seed) not yet complete, seed by seed; then the aggregate (unless not asked).

    ``evaluate_only``: train nothing; record the runs whose directory holds a trained ``best``
    checkpoint and ``metrics.jsonl`` (trained elsewhere, say, and copied without ``last``).

    >>> run_study(load_grid("configs/studies/core.yaml"), "runs/study-core", "docs/results/core")
    """
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    seeds = grid.seeds if seeds is None else seeds
    names = selected_runs(grid, only)
    in_use = []
    for seed in seeds:  # seed-major: after the first seed every configuration has a result
        for name in names:
            key = run_key(name, seed)
            result = results_dir / f"{key}.json"
            try:
                with hold_run(out_dir, key, log=log):
                    done = _study_run(grid, name, seed, out_dir, result, evaluate_only=evaluate_only,
                                      quiet=quiet, log=log)
                    if done is None:
                        continue
                    record, message = done
                    write_json_atomic(result, record)
                    log(f"{key}: done, {result}")
                    if on_result is not None:
                        on_result([result], message)
            except RunInUse as exc:
                log(str(exc))
                in_use.append(key)
    return finish_study(grid, out_dir, results_dir, in_use, aggregate_after=aggregate_after, log=log)


def finish_study(grid: StudyGrid, out_dir: Path, results_dir: Path, in_use: Sequence[str], *,
                 aggregate_after: bool, log: Log) -> dict | None:
    """The aggregate (unless not asked), once the runs left to another process (``in_use``) are
    no longer in its hands; without the aggregate, :class:`~.lock.RunInUse` names those runs."""
    if in_use and not aggregate_after:
        raise RunInUse(in_use, f"left to the processes that have them: {', '.join(in_use)}")
    wait_for_runs(out_dir, in_use, log=log)
    for key in in_use:
        if not (results_dir / f"{key}.json").exists():
            log(f"{key}: the process that had it ended without a result; running the study again runs it")
    return write_aggregate(grid, results_dir) if aggregate_after else None


def study_command(grid_path, name: str, seed: int, out_dir: Path, results_dir: Path,
                  flags: Sequence[str] = ()) -> list[str]:
    """The command line that runs one (configuration, seed) of a study on its own:
    ``rat study --only NAME --seeds S --no-aggregate``, as every executor runs it."""
    return [sys.executable, "-m", "ratkit", "study", "--grid", str(grid_path), "--only", name,
            "--seeds", str(seed), "--out", str(out_dir), "--results", str(results_dir), "--no-aggregate", *flags]


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what a SLURM allocation or a container's
    cpuset grants), not the machine's count, where the platform tells it."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def child_environment(jobs: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one of ``jobs`` run processes: each gets its share of the usable cores as
    ``OMP_NUM_THREADS`` (cores // jobs, at least 1), as torchrun does, so that N processes do not
    each start a thread per core and oversubscribe the CPU. A value the user set is kept.

    Example: ``child_environment(2)["OMP_NUM_THREADS"]`` is ``"8"`` with 16 usable cores.
    """
    env = dict(os.environ if environ is None else environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // max(1, jobs))))
    return env


def _start_run(grid_path, name: str, seed: int, out_dir: Path, results_dir: Path, flags: Sequence[str],
               log: Log, jobs: int) -> tuple[str, subprocess.Popen, object]:
    """``rat study --only NAME --seeds S`` in its own process, its output in ``OUT/<config>-seed<s>.log``."""
    key = run_key(name, seed)
    cmd = study_command(grid_path, name, seed, out_dir, results_dir, flags)
    logfile = open(out_dir / f"{key}.log", "a")  # appended: a second study's process on the run must not empty it
    log(f"{key}: started (log {out_dir / f'{key}.log'})")
    return key, subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=child_environment(jobs)), logfile


def run_study_parallel(grid_path: str | os.PathLike, grid: StudyGrid, out_dir: str | os.PathLike,
                       results_dir: str | os.PathLike, *, jobs: int, seeds: list[int] | None = None,
                       only: list[str] | None = None, child_args: Sequence[str] = (), log: Log = print,
                       aggregate_after: bool = True, evaluate_only: bool = False) -> dict | None:
    """``run_study`` with up to ``jobs`` runs at a time, each (configuration, seed) in its own
    ``rat study --only NAME --seeds S`` process (for a GPU, which a small model leaves mostly
    idle, or a machine with many cores); then the aggregate, once, from the result files.

    Every run is the same as in the sequential runner (resumable, skipped when done); only the
    order of finishing differs. Each process's log goes to ``OUT/<config>-seed<s>.log``;
    ``child_args`` are added to each process's command line (the CLI passes ``--commit`` there).

    >>> run_study_parallel("configs/studies/core.yaml", grid, "runs/study-core", "docs/results/core", jobs=4)
    """
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    names = selected_runs(grid, only)
    queue = [(name, seed) for seed in (grid.seeds if seeds is None else seeds) for name in names]
    flags = [*child_args, *(["--evaluate-only"] if evaluate_only else [])]
    out_dir.mkdir(parents=True, exist_ok=True)
    running, failed, in_use = [], [], []
    while queue or running:
        while queue and len(running) < jobs:
            running.append(_start_run(grid_path, *queue.pop(0), out_dir, results_dir, flags, log, jobs))
        time.sleep(1.0)
        for item in [r for r in running if r[1].poll() is not None]:
            key, proc, logfile = item
            logfile.close()
            running.remove(item)
            if proc.returncode == EXIT_IN_USE:
                in_use.append(key)
                log(f"{key}: in use by another process; left to it (see {out_dir / f'{key}.log'})")
                continue
            if proc.returncode != 0:
                failed.append(key)
            log(f"{key}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}")
    if failed:
        log(f"failed runs (see their logs in {out_dir}): {', '.join(failed)}")
    return finish_study(grid, out_dir, results_dir, in_use, aggregate_after=aggregate_after, log=log)
