"""A study's runs as cluster jobs: ``rat study --executor slurm`` (and ``local``), through submitit.

Each (configuration, seed) with work left is a :class:`ratkit.requeue.RequeueingJob` around
``rat study --only NAME --seeds S --no-aggregate``, the command the process executor runs; the
submitting study waits for every job, then aggregates. Jobs are recorded in ``OUT/jobs.json`` so
that a study started again submits none twice; ``local`` takes the same path up to the scheduler,
so the tests run it. How it behaves on a cluster: docs/scaling.md, "A study on a SLURM cluster".

>>> spec = ExecutorSpec("slurm", partition="gpu", time_min=180, gpus_per_job=1, cpus_per_job=8,
...                     sbatch={"account": "myproj"})
>>> run_study_jobs("configs/studies/regime.yaml", grid, "runs/study-regime", "docs/results/regime", spec)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..files import write_json_atomic
from ..requeue import RequeueingJob
from .grid import StudyError, StudyGrid, run_key
from .lock import EXIT_IN_USE, holder
from .measurements import missing_measurements, unavailable_measurements
from .runner import Log, finish_study, selected_runs, study_command

LOCAL_TIME_MIN = 7 * 24 * 60  # the local executor stops a job at its time limit; without --time, a week
JOBS_FILE = "jobs.json"  # OUT/jobs.json: the job submitted for each run, so that a restart does not submit it again
# SLURM states of a job that is running or will run (sacct's first word: "CANCELLED by 1000" is CANCELLED)
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "READY"}


@dataclass(frozen=True)
class ExecutorSpec:
    """Where a study's jobs run and what each asks for: the ``rat study`` executor flags.

    ``kind``: ``"slurm"`` or ``"local"``; ``time_min``: each job's time limit in minutes (required
    on SLURM; a run that needs longer is requeued and resumes); ``sbatch``: further sbatch
    parameters, e.g. ``{"account": "myproj"}`` (``True`` for a bare flag); ``folder``: submitit's
    job files and logs (default ``OUT/submitit``)."""

    kind: str
    partition: str | None = None
    time_min: int | None = None
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    sbatch: dict = field(default_factory=dict)
    folder: Path | None = None

    def __post_init__(self):
        if self.kind not in ("local", "slurm"):
            raise StudyError(f"--executor: {self.kind!r} is not a submitit executor; choose local or slurm")
        if self.kind == "slurm" and self.time_min is None:
            raise StudyError("--time: required with --executor slurm (each job's limit, minutes or HH:MM:SS; "
                             "a run that needs longer is requeued and resumes)")
        if self.kind == "local" and (self.partition is not None or self.sbatch):
            raise StudyError("--partition, --sbatch: only with --executor slurm")
        for flag, value, least in (("--time", self.time_min, 1), ("--gpus-per-job", self.gpus_per_job, 0),
                                   ("--cpus-per-job", self.cpus_per_job, 1)):
            if value is not None and value < least:
                raise StudyError(f"{flag}: must be >= {least}, got {value}")


EXECUTOR_FLAGS = ("partition", "time", "gpus_per_job", "cpus_per_job", "sbatch", "executor_dir")


def executor_spec(kind: str, **flags) -> ExecutorSpec | None:
    """``rat study --executor local|slurm`` and its flags (:data:`EXECUTOR_FLAGS`, as the command
    line gives them) as an :class:`ExecutorSpec`; None for ``process``, which takes none of them."""
    if kind == "process":
        given = [f for f in EXECUTOR_FLAGS if flags.get(f) not in (None, [])]
        if given:
            raise StudyError(f"{', '.join('--' + f.replace('_', '-') for f in given)}: only with --executor "
                             f"local or slurm")
        return None
    time_limit, sbatch = flags.get("time"), flags.get("sbatch") or []
    return ExecutorSpec(kind, partition=flags.get("partition"),
                        time_min=None if time_limit is None else parse_time(time_limit),
                        gpus_per_job=flags.get("gpus_per_job"), cpus_per_job=flags.get("cpus_per_job"),
                        sbatch=parse_sbatch(sbatch), folder=flags.get("executor_dir"))


def parse_time(text: str) -> int:
    """``--time``: minutes (``180``), ``H:MM:SS`` or ``D-H:MM:SS``, as whole minutes (rounded up)."""
    days, dash, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    try:
        numbers = [int(p) for p in parts] + [int(days or 0)]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 0 or len(parts) not in (1, 3) or (len(parts) == 1 and dash):
        raise StudyError(f"--time: {text!r} is not minutes, H:MM:SS or D-H:MM:SS")
    if len(parts) == 1:
        return numbers[0]
    hours, minutes, seconds, days = numbers
    return days * 1440 + hours * 60 + minutes + (seconds > 0)


def parse_sbatch(items: Sequence[str]) -> dict:
    """``--sbatch KEY=VALUE`` (repeatable; a bare ``KEY`` is a flag such as ``exclusive``) as a dict."""
    parameters = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise StudyError(f"--sbatch: {item!r} is not KEY=VALUE")
        parameters[key] = value if sep else True
    return parameters


def executor_parameters(spec: ExecutorSpec, name: str) -> dict:
    """The ``submitit.AutoExecutor.update_parameters`` arguments for ``spec``. SLURM jobs are
    ``--requeue`` unless ``--sbatch requeue=...`` says otherwise: a job requeues itself when
    preempted, and SLURM may then requeue it after a node failure too."""
    params = {"name": name, "timeout_min": spec.time_min or LOCAL_TIME_MIN}
    if spec.gpus_per_job is not None:
        params["gpus_per_node"] = spec.gpus_per_job
    if spec.cpus_per_job is not None:
        params["cpus_per_task"] = spec.cpus_per_job
    if spec.kind == "slurm":
        if spec.partition is not None:
            params["slurm_partition"] = spec.partition
        params["slurm_additional_parameters"] = {"requeue": True, **spec.sbatch}
    return params


def _submitit(spec: ExecutorSpec):
    """The submitit module, or the one line that says how to install it (every executor alike)."""
    try:
        import submitit
    except ImportError:
        raise StudyError(f"--executor {spec.kind} needs submitit: pip install 'ratkit[cluster]'") from None
    return submitit


def make_executor(spec: ExecutorSpec, folder: Path, name: str):
    """A ``submitit.AutoExecutor`` for ``spec``, its job files and logs in ``folder``."""
    submitit = _submitit(spec)
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=spec.kind)
    except RuntimeError as exc:  # no srun here
        raise StudyError(f"--executor {spec.kind}: {exc}") from None
    executor.update_parameters(**executor_parameters(spec, name))
    return executor


def _needs_a_job(grid: StudyGrid, name: str, seed: int, out_dir: Path, results_dir: Path, *,
                 evaluate_only: bool, log: Log) -> bool:
    """Whether (name, seed) has anything left to do, so that no job is queued to skip it."""
    key = run_key(name, seed)
    result = results_dir / f"{key}.json"
    if not result.exists():
        if evaluate_only and not (out_dir / key / "best.safetensors").exists():
            log(f"{key}: no trained run in {out_dir / key}; skipped (evaluate only)")
            return False
        return True
    missing = missing_measurements(grid, json.loads(result.read_text()))
    if set(missing) - set(unavailable_measurements(missing, out_dir / key)):
        return True
    log(f"{key}: complete, skipped" if not missing else
        f"{key}: lacks {', '.join(missing)}, and {out_dir / key} cannot give it; kept as is")
    return False


def read_jobs(out_dir: Path) -> dict:
    """``OUT/jobs.json``: run key -> ``{"executor", "job_id", "folder", "submitted"}`` of its last job.
    A file that is not such a mapping is a one-line StudyError naming it."""
    path = Path(out_dir) / JOBS_FILE
    if not path.exists():
        return {}
    try:
        jobs = json.loads(path.read_text())
    except (ValueError, OSError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        jobs = exc
    if not isinstance(jobs, dict) or not all(isinstance(r, dict) for r in jobs.values()):
        problem = f"{type(jobs).__name__}: {jobs}" if isinstance(jobs, Exception) else "not a mapping of runs to jobs"
        raise StudyError(f"{path}: unreadable ({problem}); it records the jobs a study submitted, so that a "
                         f"restarted study does not submit them again: repair it, or move it away if none of "
                         f"them is still queued or running")
    return jobs


def _record_job(out_dir: Path, key: str, spec: ExecutorSpec, job, folder: Path) -> None:
    jobs = read_jobs(out_dir)  # read again: another study on this OUT may have recorded its own
    jobs[key] = {"executor": spec.kind, "job_id": str(job.job_id), "folder": str(folder),
                 "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json_atomic(out_dir / JOBS_FILE, jobs)


def live_jobs(out_dir: Path, keys: Sequence[str], spec: ExecutorSpec, *, log: Log) -> dict:
    """The recorded SLURM jobs of ``keys`` that are still pending, running or requeued, as
    ``submitit.SlurmJob`` objects to wait on (run key -> job). One ``sacct`` call for all of them.
    A state sacct cannot give (no accounting, a job too old) counts as ended: the run lock keeps a
    job submitted again off a run that the first still has."""
    if spec.kind != "slurm":
        return {}
    submitit = _submitit(spec)
    recorded = {k: r for k, r in read_jobs(out_dir).items() if k in keys and r.get("executor") == "slurm"}
    jobs = {k: submitit.SlurmJob(folder=r["folder"], job_id=r["job_id"]) for k, r in recorded.items()}
    if jobs:
        next(iter(jobs.values())).watcher.update()  # one sacct for every registered job
    live = {}
    for key, job in jobs.items():
        state = job.watcher.get_state(job.job_id, mode="cache").split(" ")[0].upper()
        if state in LIVE_STATES:
            log(f"{key}: job {job.job_id} from before is {state}; waiting on it, not submitting again")
            live[key] = job
    return live


def run_study_jobs(grid_path, grid: StudyGrid, out_dir, results_dir, spec: ExecutorSpec, *,
                   jobs: int | None = None, seeds: list[int] | None = None, only: list[str] | None = None,
                   child_args: Sequence[str] = (), log: Log = print, aggregate_after: bool = True,
                   evaluate_only: bool = False, poll_s: float = 2.0) -> dict | None:
    """Each (configuration, seed) with something left to do as a submitit job
    (:class:`~ratkit.requeue.RequeueingJob`), at most ``jobs`` queued at a time (default: all);
    then, once every job has ended, the aggregate from the result files. A run's output goes to
    ``OUT/<config>-seed<s>.log`` (every attempt appended), submitit's files to ``spec.folder``
    (default ``OUT/submitit``), each job's id to ``OUT/jobs.json``. A run whose recorded SLURM
    job is still live, or whose lock another process holds, gets no new job; the study waits for it.

    >>> run_study_jobs("configs/studies/regime.yaml", grid, "runs/study-regime", "docs/results/regime",
    ...                ExecutorSpec("slurm", partition="gpu", time_min=180, gpus_per_job=1))
    """
    grid_path, out_dir, results_dir = Path(grid_path).resolve(), Path(out_dir).resolve(), Path(results_dir).resolve()
    names = selected_runs(grid, only)
    read_jobs(out_dir)  # a file it cannot read is refused now, before any job is submitted, not after
    queue = [(name, seed) for seed in (grid.seeds if seeds is None else seeds) for name in names
             if _needs_a_job(grid, name, seed, out_dir, results_dir, evaluate_only=evaluate_only, log=log)]
    running = live_jobs(out_dir, [run_key(*run) for run in queue], spec, log=log)
    in_use = []
    for key in [run_key(*run) for run in queue if run_key(*run) not in running]:
        who = holder(out_dir, key)
        if who is not None:
            log(f"{key}: in use by another process ({who}); no job, waiting for it")
            in_use.append(key)
    queue = [run for run in queue if run_key(*run) not in running and run_key(*run) not in in_use]
    flags = [*child_args, *(["--evaluate-only"] if evaluate_only else [])]
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(spec.folder or out_dir / "submitit").resolve()
    executor = make_executor(spec, folder, f"rat-{grid.name}") if queue else None
    failed = []
    try:
        while queue or running:
            while queue and (jobs is None or len(running) < jobs):
                name, seed = queue.pop(0)
                key = run_key(name, seed)
                command = study_command(grid_path, name, seed, out_dir, results_dir, flags)
                try:
                    running[key] = executor.submit(RequeueingJob(key, command, out_dir / f"{key}.log"))
                except Exception as exc:  # sbatch refused it: a partition or account that does not exist, say
                    queued = "".join(f"; {k} is job {j.job_id}" for k, j in running.items())
                    raise StudyError(f"{key}: not submitted: {exc}{queued}") from None
                _record_job(out_dir, key, spec, running[key], folder)
                log(f"{key}: submitted as job {running[key].job_id} (log {out_dir / f'{key}.log'})")
            time.sleep(poll_s)
            for key, job in [(k, j) for k, j in running.items() if j.done()]:
                del running[key]
                try:
                    outcome = job.result()
                except Exception:  # the job's failure, as submitit reports it (FailedJobError, UncompletedJobError)
                    failed.append(key)
                    log(f"{key}: FAILED (job {job.job_id}; see {out_dir / f'{key}.log'} and {job.paths.stderr})")
                    continue
                if outcome == EXIT_IN_USE:
                    in_use.append(key)
                    log(f"{key}: job {job.job_id} found the run in use by another process; left to it")
                else:
                    log(f"{key}: done")
    except KeyboardInterrupt:
        if running and spec.kind == "slurm":
            log(f"stopped waiting; the jobs go on ({', '.join(f'{k}: {j.job_id}' for k, j in running.items())}). "
                f"The same rat study, started again, waits on them instead of submitting them again, "
                f"and aggregates once they have ended")
        raise
    if failed:
        log(f"failed runs (see their logs in {out_dir}): {', '.join(failed)}")
    return finish_study(grid, out_dir, results_dir, in_use, aggregate_after=aggregate_after, log=log)
