"""Writing files so that no reader ever sees half of one, and hashing tensors: the bottom floor that
every writer (checkpoints, evaluation state, studies, run directories) uses. Imports nothing of ratkit."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

import torch
from torch import Tensor


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """Digest of names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file of its own in the same directory, fsync it, rename it over
    ``path``, then fsync the directory (where the system allows): a reader, a run stopped at any
    moment, or another writer of the same path at the same time sees the old file or a new one,
    never half of one. The file gets the usual permissions (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:  # O_EXCL: a name no other writer holds, created with the umask applied by the system
        tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power loss; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """``payload`` as indented JSON, written with :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())
