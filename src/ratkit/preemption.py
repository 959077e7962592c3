"""A scheduler's notice (SIGTERM, SIGUSR1) where there is no training step to finish first.

During a run's start-up (imports, loading data, building the model, restoring ``last``) and its
final evaluation, ``rat train`` stops at once on such a signal: :class:`PreemptAtOnce` raises
:class:`Preempted`, the command writes the ``preempted`` file and exits 75, and ``rat train
--resume`` continues (a run without ``last`` starts from its recorded config; an evaluation from
its finished batches). The training loop itself stops at a step boundary instead
(:class:`ratkit.train.stopping.StepBoundaryInterrupt`), which takes the signals over while it runs.

Free of torch and of the rest of ratkit, so the CLI installs it before any heavy import.
"""

from __future__ import annotations

import signal
import threading

PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 outside the training loop; ``run_dir`` is set once the run has one."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.run_dir = None


class PreemptAtOnce:
    """Raise :class:`Preempted` where the process is when SIGTERM or SIGUSR1 arrives.

    Example::

        with PreemptAtOnce():
            cfg = load_config(...)   # a preemption here raises Preempted
    """

    def __init__(self) -> None:
        self._previous: dict = {}

    @staticmethod
    def _handle(signum, frame) -> None:
        raise Preempted(signal.Signals(signum).name)

    def __enter__(self):
        self._previous = install_handlers(PREEMPT_SIGNALS, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore_handlers(self._previous)
        self._previous = {}


def install_handlers(names, handler) -> dict:
    """Install ``handler`` for the named signals (those this platform has; only the main thread
    may); returns the previous handlers for :func:`restore_handlers`."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in names:
            if hasattr(signal, name):  # no SIGUSR1 on Windows
                previous[name] = signal.signal(getattr(signal, name), handler)
    return previous


def restore_handlers(previous: dict) -> None:
    for name, handler in previous.items():
        signal.signal(getattr(signal, name), handler)
