"""Per-chunk results of an evaluation on disk, so an interrupted evaluation resumes where it stopped.

Standard AutoAttack on a full test set takes hours on a CPU. Every attack of the protocol runs
chunk by chunk (one batch of images at a time); after each chunk its verdicts, the adversarial
inputs if they are kept, and the state of the attack's random generator after the chunk are
written to ``<dir>/<attack>-<chunk>.safetensors`` (atomically). A rerun of the same evaluation
loads the chunks it finds instead of attacking them again and restores the generator, so the
chunks it still computes draw the same random numbers as in an uninterrupted run: the final
numbers are identical.

"The same evaluation" is a fingerprint: the model's weights, the images and labels, eps, norm,
protocol, seed, batch size and the AutoAttack subset. Each evaluation keeps its chunks in a
sub-directory named by the fingerprint's digest (with the fingerprint in its ``manifest.json``),
so evaluations of one checkpoint with other settings never touch each other's chunks. The caller removes the directory once the
report is written.

Why not pyautoattack's ``state_path``: in pyautoattack 0.2.0 a restored state skips the branch
that creates ``y_adv`` and the run then fails, and its state is saved at most once a minute, so
chunks of our own are both exact and simpler. Within a chunk nothing is kept: an interruption
loses at most one batch of one attack.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from ..files import atomic_write_bytes, tensors_sha256

MANIFEST = "manifest.json"


def fingerprint(model: nn.Module, x: Tensor, y: Tensor, **settings) -> dict:
    """What makes two evaluations the same: weights, data and protocol settings."""
    return {"weights": tensors_sha256(model.state_dict()), "data": tensors_sha256({"x": x, "y": y}), **settings}


class ChunkStore:
    """The chunks of one evaluation in ``directory``.

    Example::

        store = ChunkStore.open("runs/x/eval-state-best", fingerprint(model, x, y, eps=0.1))
        chunks = store.attack("pgd20")   # .load(k) -> dict of tensors or None; .save(k, tensors)
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike, key: dict, *, writer: bool = True) -> "ChunkStore":
        """The store of the evaluation ``key`` under ``directory``: a sub-directory named by the
        key's digest, so two evaluations of one checkpoint with other settings (another protocol,
        n, norm), even running at once, never share or empty each other's chunks. A ``writer``
        (rank 0) records the key there. A directory of the previous layout (chunks and manifest
        directly in ``directory``) is still resumed when its key is this one."""
        directory = Path(directory)
        try:  # the layout before per-evaluation sub-directories
            if json.loads((directory / MANIFEST).read_text()) == key:
                return cls(directory)
        except (OSError, ValueError):
            pass
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        store = directory / digest
        if writer:
            manifest = store / MANIFEST
            try:
                same = json.loads(manifest.read_text()) == key
            except (OSError, ValueError):
                same = False
            if not same:  # a torn start: begin this evaluation's directory again
                if store.exists():
                    shutil.rmtree(store)
                store.mkdir(parents=True)
                atomic_write_bytes(manifest, (json.dumps(key, indent=1, sort_keys=True) + "\n").encode())
        return cls(store)

    def attack(self, name: str) -> "AttackChunks":
        return AttackChunks(self.directory, name)

    def remove(self) -> None:
        """Remove this evaluation's chunks, and the parent directory when no other evaluation's remain."""
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.parent.rmdir()  # only if empty: another evaluation may still be running
        except OSError:
            pass


class AttackChunks:
    """One attack's chunks: ``load(k)`` gives chunk k's tensors (None if not done), ``save(k, ...)``
    writes them. A generator state saved with a chunk is the state *after* that chunk."""

    def __init__(self, directory: Path, name: str):
        self.directory, self.name = directory, name

    def _path(self, k: int) -> Path:
        return self.directory / f"{self.name}-{k:05d}.safetensors"

    def load(self, k: int, device: torch.device | str = "cpu", *, inputs: bool = False) -> dict[str, Tensor] | None:
        """Chunk k's tensors, or None when it is not done (or, with ``inputs``, was kept without
        its adversarial inputs ``x_adv``)."""
        path = self._path(k)
        if not path.exists():
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # a torn or foreign file: compute the chunk again
            return None
        if inputs and "x_adv" not in tensors:
            return None
        return {key: (t if key == "generator" else t.to(device)) for key, t in tensors.items()}

    def save(self, k: int, tensors: dict[str, Tensor]) -> None:
        atomic_write_bytes(self._path(k), save({key: t.detach().to("cpu").contiguous() for key, t in tensors.items()}))
