"""Progress for people and for batch logs: a tqdm bar on a terminal, a plain line about once a
minute otherwise, so a cluster log shows that a long job (AutoAttack above all) is alive.

    with progress(total=1000, desc="AutoAttack", unit="img", quiet=False) as bar:
        bar.update(250)

Only the main rank reports. ``$RAT_PROGRESS_INTERVAL`` sets the seconds between plain lines
(default 60).
"""

from __future__ import annotations

import os
import sys
import time

INTERVAL_ENV = "RAT_PROGRESS_INTERVAL"


class PlainProgress:
    """``update``/``set_postfix``/``close`` like tqdm; prints "desc: done/total unit (pct), rate, ETA"."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, interval: float | None = None,
                 stream=None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = float(os.environ.get(INTERVAL_ENV, 60)) if interval is None else interval
        self.stream = stream or sys.stderr
        self.started = self.last = time.monotonic()
        self.start_n = initial
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval and self.n < self.total:
            self.last = now
            self._print(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _print(self, now: float) -> None:
        done = self.n - self.start_n
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        eta_text = f"{eta / 60:.1f} min" if eta != float("inf") else "unknown"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"[{time.strftime('%H:%M:%S')}] {self.desc}: {self.n}/{self.total} {self.unit} "
              f"({100 * self.n / max(self.total, 1):.0f}%), {rate:.1f} {self.unit}/s, ETA {eta_text}{extra}",
              file=self.stream, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent(PlainProgress):
    def update(self, n: int = 1) -> None:
        self.n += n


def progress(total: int, desc: str, unit: str = "it", *, quiet: bool = False, main: bool = True, initial: int = 0):
    """A tqdm bar when stderr is a terminal; plain periodic lines when it is not (batch jobs);
    nothing when ``quiet`` or not the main rank."""
    if quiet or not main:
        return _Silent(total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)
    return PlainProgress(total, desc, unit, initial)
