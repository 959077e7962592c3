"""Why a run stops before its last epoch, and how it stops: at a step boundary, every rank at
the same one, with ``last`` saved (the loop saves it; this module decides and raises).

- the time budget ``train.time_budget_s`` (seconds of training over the whole run, resumes
  included), checked between epochs;
- a non-finite loss: :class:`TrainingStopped`, the last good checkpoint kept;
- Ctrl-C (KeyboardInterrupt, :class:`TrainingInterrupted` from :func:`ratkit.train.train`) and
  SIGTERM/SIGUSR1 (:class:`TrainingPreempted`), caught by :class:`StepBoundaryInterrupt` and
  honoured after the current step.
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from .. import distributed
from ..preemption import install_handlers, restore_handlers
from .state import Progress


class TrainingStopped(Exception):
    """Training stopped early (non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the progress so far is saved in ``run_dir/last``."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class TrainingPreempted(TrainingInterrupted):
    """SIGTERM or SIGUSR1 (a scheduler's notice) during training: ``last`` is saved at a step
    boundary and the run is resumable; ``rat train`` exits 75 so a job script can requeue it."""

    def __init__(self, run_dir: Path, signal_name: str):
        super().__init__(run_dir)
        self.signal_name = signal_name


class StepBoundaryInterrupt:
    """Turn Ctrl-C, SIGTERM and SIGUSR1 into a request honoured after the current training step,
    so the saved progress is always a consistent step boundary.

    Ctrl-C asks to stop (``request == CTRL_C``); a second Ctrl-C interrupts at once. SIGTERM,
    and SIGUSR1 that a scheduler can be told to send ahead of its time limit (SLURM
    ``--signal=USR1@120``), ask for a resumable stop (``PREEMPT``). Repeats of those are ignored:
    a scheduler may send the notice and then SIGTERM, and the step must still finish."""

    NONE, CTRL_C, PREEMPT = 0, 1, 2
    SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.request = self.NONE
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.request != self.NONE

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            self.request, self.signal_name = self.CTRL_C, "SIGINT"
        else:
            self.request, self.signal_name = self.PREEMPT, signal.Signals(signum).name

    def __enter__(self):
        self._previous = install_handlers(self.SIGNALS, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore_handlers(self._previous)
        self._previous = {}


class StopConditions:
    """The trainer's stop conditions; every answer is the same on every rank, so the ranks stop
    together. ``interrupt`` is the active :class:`StepBoundaryInterrupt` (None: no signals caught).

    Example::

        stops = StopConditions(run_dir, device, time_budget_s=3600)
        with StepBoundaryInterrupt() as stops.interrupt:
            ...  # after every step: stops.honour_requests()
    """

    def __init__(self, run_dir: Path, device: torch.device, *, time_budget_s: float | None):
        self.run_dir, self.device, self.time_budget_s = run_dir, device, time_budget_s
        self.interrupt: StepBoundaryInterrupt | None = None

    def budget_reached(self, progress: Progress) -> bool:
        """Whether the time budget is spent, asked before an epoch. A resumed partial epoch is
        finished first, as the uninterrupted run would have."""
        budget = self.time_budget_s
        over = budget is not None and progress.step_in_epoch == 0 and progress.train_seconds >= budget
        return distributed.any_rank(over, self.device)

    def budget_spent(self, progress: Progress) -> bool:
        """Whether the time budget is spent, asked after an epoch: the run stops after it, so the
        epoch is validated (every run that trained has a ``best``)."""
        budget = self.time_budget_s
        return distributed.any_rank(budget is not None and progress.train_seconds >= budget, self.device)

    def honour_requests(self) -> None:
        """Stop every rank at this step boundary if any rank was asked to (the strongest request
        wins): Ctrl-C raises KeyboardInterrupt, SIGTERM/SIGUSR1 :class:`TrainingPreempted`."""
        local = self.interrupt.request if self.interrupt is not None else StepBoundaryInterrupt.NONE
        request = distributed.max_over_ranks(local, self.device)
        if request == StepBoundaryInterrupt.PREEMPT:
            name = self.interrupt.signal_name if local == request else "a signal on another rank"
            raise TrainingPreempted(self.run_dir, name)
        if request != StepBoundaryInterrupt.NONE:
            raise KeyboardInterrupt

    def non_finite_loss(self, epoch: int, progress: Progress, error: Exception) -> TrainingStopped:
        """The error to raise when a step of ``epoch`` (0-based) had a non-finite loss."""
        return TrainingStopped(f"epoch {epoch + 1}, step {progress.step_in_epoch + 1}: {error}; "
                               f"the last good checkpoint is {self.run_dir / 'last.safetensors'}")
