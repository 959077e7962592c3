"""One process at a time on a study run: ``OUT/<config>-seed<s>.lock``.

A ``rat study`` started twice on one ``OUT`` (two ``--jobs`` by mistake, or a cluster study
submitted again while its first jobs still run) would otherwise train two processes in one run
directory at once and corrupt it. The process that works on a run holds an exclusive
``flock`` on the run's lock file for as long as it does; a second one finds it held, leaves
the run alone and says who has it. The lock file names its holder (pid, host, since when).

The operating system drops a ``flock`` when its process dies, by ``kill -9`` too (on a shared
filesystem, when the node is lost: NFSv4 once the lease expires), so a run left by a crash is
never blocked. The lock file stays where it is; removing it would let a second process lock a
new file while the first still holds the old one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

EXIT_IN_USE = 73  # rat study: a run was in use by another process and was left to it

# how long a process keeps trying a held lock before it leaves the run: a controller that waits
# on a run holds the lock for an instant now and then (:func:`holder`)
PATIENCE_S = 3.0


class RunInUse(Exception):
    """Runs that another process is working on, left to it: ``keys``; the message says who holds each."""

    def __init__(self, keys: Sequence[str], message: str):
        super().__init__(message)
        self.keys = list(keys)


def lock_path(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / f"{key}.lock"


def _try_lock(handle) -> bool:
    """Take the exclusive lock without waiting: True, or False when another process holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _described(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "holder not yet written"


@contextmanager
def hold_run(out_dir: Path, key: str, *, log: Callable[[str], None] = print,
             patience_s: float = PATIENCE_S) -> Iterator[None]:
    """Hold ``OUT/<key>.lock`` for the ``with`` block; :class:`RunInUse` when another process
    holds it (after ``patience_s`` of trying). A filesystem without ``flock`` (Lustre mounted
    without the ``flock`` option) gets one warning and no lock.

    >>> with hold_run(Path("runs/study-core"), "trades-seed0"):
    ...     train_and_record()
    """
    path = lock_path(out_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:  # "a+": never empty the holder's line before the lock is ours
        deadline = time.monotonic() + patience_s
        try:
            while not _try_lock(handle):
                if time.monotonic() >= deadline:
                    raise RunInUse([key], f"{key}: in use by another process ({_described(handle)}); skipped")
                time.sleep(0.1)
        except OSError as exc:  # ENOLCK, ENOSYS, EINVAL: no flock on this filesystem
            log(f"{key}: no lock on {path} ({errno.errorcode.get(exc.errno, exc.errno)}: the filesystem "
                f"lacks flock); nothing keeps a second process out of this run")
            locked = False
        else:
            locked = True
        if not locked:
            yield
            return
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # still ours: an empty lock file is a free run
            handle.flush()
            # closing the file releases the lock


def holder(out_dir: Path, key: str) -> str | None:
    """Who holds ``key``'s lock ("pid N on host H, since T"), or None when the run is free.
    Finding out takes the lock for an instant when it is free (flock cannot be asked); a process
    that starts on the run at that instant waits for it (:data:`PATIENCE_S`)."""
    path = lock_path(out_dir, key)
    if not path.exists():
        return None
    with open(path, "a+") as handle:  # writable: NFS emulates flock with POSIX locks, which need it
        try:
            if _try_lock(handle):
                return None  # closing releases it
        except OSError:
            return None
        return _described(handle)


def wait_for_runs(out_dir: Path, keys: Sequence[str], *, log: Callable[[str], None] = print,
                  poll_s: float = 10.0) -> None:
    """Until no other process holds the locks of ``keys``: the runs this study left to another
    process, before it aggregates their results."""
    for key in keys:
        who = holder(out_dir, key)
        if who is not None:
            log(f"{key}: waiting for the process that has it ({who})")
        while who is not None:
            time.sleep(poll_s)
            who = holder(out_dir, key)
