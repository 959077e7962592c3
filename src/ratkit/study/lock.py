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

A filesystem without ``flock`` (Lustre mounted without the ``flock`` option: the call fails with
ENOLCK, EOPNOTSUPP or EINVAL) gets an exclusive lock file instead, ``OUT/<config>-seed<s>.lock.excl``,
created with ``O_EXCL`` (which only one process can do), naming its holder and removed when it lets
go. A crashed holder cannot remove it, so the holder touches it every :data:`HEARTBEAT_S`; a file
untouched for :data:`STALE_S` is a dead holder's, and the next process takes it over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..exits import EXIT_IN_USE

# how long a process keeps trying a held lock before it leaves the run: a controller that waits
# on a run holds the lock for an instant now and then (:func:`holder`)
PATIENCE_S = 3.0
# without flock: how often a holder touches its exclusive lock file, and how old its last touch
# may be before the file counts as a dead holder's (clocks of the nodes differ a little)
HEARTBEAT_S = 30.0
STALE_S = 300.0


class RunInUse(Exception):
    """Runs that another process is working on, left to it: ``keys``; the message says who holds each."""

    def __init__(self, keys: Sequence[str], message: str):
        super().__init__(message)
        self.keys = list(keys)


def lock_path(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / f"{key}.lock"


def exclusive_path(out_dir: Path, key: str) -> Path:
    """The lock file of a filesystem without ``flock``: it exists while a process holds the run."""
    return Path(out_dir) / f"{key}.lock.excl"


def _holder_line() -> str:
    return f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


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
    without the ``flock`` option) gets one line in the log and the exclusive lock file instead.

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
        except OSError as exc:  # ENOLCK, EOPNOTSUPP, EINVAL, ENOSYS: no flock on this filesystem
            locked = False
            log(f"{key}: no flock on {path} ({errno.errorcode.get(exc.errno, exc.errno)}: the filesystem lacks "
                f"it); holding {exclusive_path(out_dir, key).name} instead")
        else:
            locked = True
        if not locked:
            with _hold_exclusive(exclusive_path(out_dir, key), key, patience_s):
                yield
            return
        handle.truncate(0)
        handle.write(_holder_line() + "\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # still ours: an empty lock file is a free run
            handle.flush()
            # closing the file releases the lock


def _exclusive_holder(path: Path) -> tuple[str, float] | None:
    """(who, when last touched) of an exclusive lock file whose holder is alive, or None when
    there is none or its heartbeat is older than :data:`STALE_S` (a dead holder's)."""
    try:
        touched = path.stat().st_mtime
        who = path.read_text().strip() or "holder not yet written"
    except FileNotFoundError:
        return None
    return None if time.time() - touched > STALE_S else (who, touched)


def _take_over_stale(path: Path) -> None:
    """Move a dead holder's exclusive lock file away, unless it is (by now) a live holder's: it is
    renamed first, which only one process can do, and put back if it turns out to be fresh."""
    grave = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return  # another process took it over first
    if time.time() - grave.stat().st_mtime <= STALE_S:  # a live holder's, made after we looked
        try:
            os.link(grave, path)
        except FileExistsError:
            pass
    grave.unlink()


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except FileNotFoundError:
            return


@contextmanager
def _hold_exclusive(path: Path, key: str, patience_s: float) -> Iterator[None]:
    """Hold the run through ``path`` created with ``O_EXCL``, touched every :data:`HEARTBEAT_S`
    while held and removed after; :class:`RunInUse` when a live holder has it."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            live = _exclusive_holder(path)
            if live is None:
                _take_over_stale(path)
            elif time.monotonic() >= deadline:
                raise RunInUse([key], f"{key}: in use by another process ({live[0]}); skipped") from None
            else:
                time.sleep(0.1)
    with os.fdopen(fd, "w") as handle:
        handle.write(_holder_line() + "\n")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), name=f"{key} lock heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        path.unlink(missing_ok=True)


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
        except OSError:  # no flock here: the exclusive lock file says
            live = _exclusive_holder(exclusive_path(out_dir, key))
            return None if live is None else live[0]
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
