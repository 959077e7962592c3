"""A ``rat`` command as a submitit job that requeues itself while the command says it was preempted.

``rat study --executor slurm|local`` (:mod:`ratkit.study.cluster`) submits each run of a grid as
a :class:`RequeueingJob` around ``rat study --only NAME --seeds S``; the job works the same
around ``rat train`` or ``rat train --resume``, or any command that exits 75 when it stops
resumably. The job:

* runs the command in a child process, its output appended to a log (every attempt);
* passes the scheduler's notices on to the child while it runs: SIGTERM and SIGUSR1 as they
  are, and submitit's time-limit signal (SIGUSR2, sent ``--signal=USR2@90`` before the limit)
  as SIGUSR1. ``rat train`` stops at a step boundary with ``last`` saved, writes ``preempted``
  and exits 75. The child ignores SIGUSR2 itself: SLURM signals every process of the job step,
  and SIGUSR2 would otherwise kill it;
* when the child exits 75, or a notice ended it by its signal (during the start-up or the
  evaluation of ``rat study``, which does not catch it there), requeues itself through
  submitit's job environment: ``scontrol requeue`` on SLURM; on the local executor the requeue
  exit code, on which submitit's controller starts the job again (6 attempts at most). The next
  attempt runs the same command, which resumes. On SLURM the job itself stops at
  :data:`MAX_ATTEMPTS` as well (``SLURM_RESTART_COUNT``), so a command that always exits 75 does not
  requeue forever: the last attempt fails, saying so in the log; ``rat study`` run again submits
  the run anew, and it resumes;
* when the command exits 73 (``rat study``: the run is in use by another process, a duplicate
  job), ends without a requeue and without failing, returning 73; otherwise returns 0 (exit 0) or
  fails, naming its log.

Why the job takes the signals over while the child runs, instead of leaving them to submitit's
own handler: that handler calls :meth:`RequeueingJob.checkpoint` and requeues at once, without
waiting for the child to save. ``checkpoint`` (the same job, submitted again) stays for a notice
that arrives before or after the child runs; running the command again resumes or skips.

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
