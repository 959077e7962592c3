"""A ``rat`` command as a submitit job that requeues itself while the command says it was preempted.

``rat study --executor slurm|local`` (:mod:`ratkit.study.cluster`) submits each run of a grid as a
:class:`RequeueingJob`; it passes the scheduler's notices on to its command and requeues when the
command exits 75, at most :data:`MAX_ATTEMPTS` attempts; exit 73 (the run is another process's)
ends it without failing. How and why: docs/scaling.md, "A study on a SLURM cluster".

Free of torch and of the rest of ratkit, so a job starts its child without heavy imports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .exits import EXIT_IN_USE, EXIT_PREEMPTED
from .preemption import PREEMPT_SIGNALS, install_handlers, restore_handlers

MAX_ATTEMPTS = 6  # a job's attempts at most, the first included: as submitit's local controller


class RequeueingJob:
    """``command`` as a submitit job named ``key``, its output appended to ``log_path``;
    requeued while the command says it was preempted (see the module's docstring). Returns the
    command's exit code: 0, or :data:`EXIT_IN_USE` when another process has the run.

    >>> executor = submitit.AutoExecutor("runs/study/submitit", cluster="slurm")
    >>> executor.submit(RequeueingJob("trades-seed0", ["rat", "study", "--only", "trades", "--seeds", "0"],
    ...                               Path("runs/study/trades-seed0.log")))
    """

    def __init__(self, key: str, command: Sequence[str], log_path: Path, max_attempts: int = MAX_ATTEMPTS):
        self.key, self.command, self.log_path = key, list(command), Path(log_path)
        self.max_attempts = max_attempts

    def __call__(self) -> int:
        own = _submitit_signal()
        spare = own.name not in PREEMPT_SIGNALS  # the child ignores the signal it has no use for
        with open(self.log_path, "a") as log:
            log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.key}: job {_job_id()}, "
                      f"{' '.join(self.command)}\n")
            log.flush()
            child = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: signal.signal(own, signal.SIG_IGN)) if spare else None)
            with _PassNotices(child, own) as notices:
                code = child.wait()
            preempted = code == EXIT_PREEMPTED or (notices.received is not None and code < 0)
            attempt = _attempt()
            last = preempted and attempt >= self.max_attempts
            if last:
                said = f", preempted on attempt {attempt} of at most {self.max_attempts}: not requeued; run it again"
            elif preempted:
                said = f", preempted: requeued to resume (attempt {attempt} of at most {self.max_attempts})"
            else:
                said = ""
            log.write(f"== {self.key}: exit {code}{said}\n")
        if notices.received:
            print(f"{self.key}: {notices.received} passed on to the command", flush=True)
        if code == 0:
            print(f"{self.key}: done", flush=True)
            return code
        if code == EXIT_IN_USE:  # a duplicate job: the process that has the run finishes it
            print(f"{self.key}: in use by another process; left to it", flush=True)
            return code
        if preempted and not last:
            print(f"{self.key}: preempted (exit {code}); requeued to resume", flush=True)
            _requeue_this_job()
        why = f" on attempt {attempt} of at most {self.max_attempts}, not requeued" if last else ""
        raise RuntimeError(f"{self.key}: {self.command[0]} exited {code}{why}; see {self.log_path}")

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on its time-limit signal outside :meth:`__call__`'s watch: the same job
        again (it resumes or skips)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class _PassNotices:
    """While ``child`` runs: SIGTERM and SIGUSR1 go on to it as they are, ``own`` (submitit's
    time-limit signal) as SIGUSR1. ``received`` names the first notice."""

    def __init__(self, child: subprocess.Popen, own: signal.Signals):
        self.child, self.own = child, own
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name
        if self.child.returncode is None:
            self.child.send_signal(signal.SIGUSR1 if signum == self.own else signum)

    def __enter__(self):
        self._previous = install_handlers({*PREEMPT_SIGNALS, self.own.name}, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore_handlers(self._previous)


def _submitit_signal() -> signal.Signals:
    """The signal submitit has SLURM send before the time limit (``SUBMITIT_PREEMPT_SIGNAL``, USR2)."""
    from submitit import JobEnvironment

    return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]


def _job_id() -> str:
    from submitit import JobEnvironment

    try:
        return JobEnvironment().job_id
    except (KeyError, RuntimeError):  # not in a submitit job
        return "?"


def _attempt() -> int:
    """Which attempt of its job this is, the first being 1: SLURM counts the requeues
    (``SLURM_RESTART_COUNT``); submitit's local controller stops at 6 attempts itself."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    except ValueError:
        return 1


def _requeue_this_job() -> None:
    """Put the running job back in its queue as submitit does after its own checkpoint, then
    exit without a result, so the job is not done: ``scontrol requeue`` on SLURM; on the local
    executor the requeue exit code (the controller starts the job again)."""
    from submitit import JobEnvironment
    from submitit.core.utils import DelayedSubmission

    env = JobEnvironment()
    countdown = DelayedSubmission.load(env.paths.submitted_pickle)._timeout_countdown  # only logged
    try:
        env._requeue(countdown)  # the local executor's exits here
    except (OSError, subprocess.SubprocessError) as exc:  # e.g. a job SLURM is requeueing already
        print(f"could not requeue: {exc}; running it again resumes", flush=True)
    sys.exit(EXIT_PREEMPTED)
