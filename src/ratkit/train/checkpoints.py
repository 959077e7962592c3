"""The two checkpoints of a run directory, written by rank 0 only.

``last`` holds everything a resume needs: weights, optimizer state, the states of the random
generators, float16's gradient scaler (as the ``grad_scaler`` metadata) and the
:class:`~ratkit.train.state.Progress` (as the ``progress`` metadata); it
is written after every epoch, on a stop, and mid-epoch every ``train.checkpoint_every_s``
seconds of training. ``best`` holds the weights of the epoch with the highest validation
PGD-20 accuracy (never the test set), with the epoch and its validation numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoints import CheckpointError, read_checkpoint, save_model
from ..methods import StepPrecision
from .state import Progress


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class LastCheckpoint:
    """``run_dir/last``: the model, optimizer and random states of a run and its progress.

    ``meta`` is the run's metadata (dataset, config, method); ``main`` is False on the ranks
    that do not write; ``every_s`` is ``train.checkpoint_every_s`` (None: after epochs only);
    ``precision`` the step's, whose gradient scaler (float16) is saved and restored.

    Example: ``last.save(progress)``; on a resume ``progress = last.restore()``.
    """

    def __init__(self, run_dir: Path, model: nn.Module, spec: dict, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator, device: torch.device, meta: dict, *, main: bool,
                 every_s: float | None, precision: StepPrecision | None = None):
        self.path, self.model, self.spec, self.optimizer = run_dir / "last", model, spec, optimizer
        self.generator, self.device, self.meta, self.main, self.every_s = generator, device, meta, main, every_s
        self.precision = precision or StepPrecision()
        self.saved_at_s = 0.0  # progress.train_seconds when `last` was last written

    def save(self, progress: Progress) -> None:
        if not self.main:
            return
        tensors, optim_meta = _optimizer_to_tensors(self.optimizer)
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/generator"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {**self.meta, "progress": progress.to_dict(), "optimizer": optim_meta,
                "grad_scaler": self.precision.state_dict()}
        save_model(self.path, self.model, self.spec, meta, tensors)
        self.saved_at_s = progress.train_seconds

    def save_if_due(self, progress: Progress, steps_per_epoch: int) -> None:
        """Mid-epoch: a kill -9 loses at most ``every_s`` seconds of steps (the end of an epoch
        saves anyway)."""
        if (self.every_s is not None and progress.step_in_epoch < steps_per_epoch
                and progress.train_seconds - self.saved_at_s >= self.every_s):
            self.save(progress)

    def restore(self) -> Progress:
        """Load ``last`` into the model, optimizer and generators (every rank); its progress."""
        tensors, meta = read_checkpoint(self.path, self.device)
        saved = tensors["rng/generator"].cpu()
        if saved.numel() != self.generator.get_state().numel():  # a CUDA generator's state on a CPU, or back
            other = "cuda" if saved.numel() < self.generator.get_state().numel() else "cpu"
            raise CheckpointError(f"{self.path}: saved on {other}, and its random generator state cannot go on "
                                  f"on {self.device.type} (the data order and attacks would not continue the "
                                  f"run); resume on {other} (train.device), or start a new run from its weights "
                                  f"with train.init_from")
        self.model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        _optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        self.precision.load_state_dict(meta.get("grad_scaler") or {})
        torch.set_rng_state(tensors["rng/torch"].cpu())
        self.generator.set_state(tensors["rng/generator"].cpu())
        if "rng/cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng/cuda"].cpu(), self.device)
        progress = Progress.from_dict(meta["progress"])
        self.saved_at_s = progress.train_seconds
        return progress


class BestCheckpoint:
    """``run_dir/best``: chosen on validation PGD-20 accuracy (the first epoch of the highest);
    without validation data, every epoch is the best so far.

    Example: ``best.consider(progress, epoch=3, row=row)`` after epoch 3 was validated.
    """

    def __init__(self, run_dir: Path, model: nn.Module, spec: dict, meta: dict, *, validated: bool, main: bool):
        self.path, self.model, self.spec, self.meta = run_dir / "best", model, spec, meta
        self.validated, self.main = validated, main

    def consider(self, progress: Progress, epoch: int, row: dict) -> None:
        """Save ``best`` if ``epoch`` (1-based, its metrics ``row``) beats the best so far;
        records the best epoch in ``progress`` and in ``row["best_epoch"]``."""
        robust = row.get("val_pgd20", -1.0)
        if robust > progress.best_val_robust or not self.validated:
            progress.best_val_robust, progress.best_epoch = robust, epoch
            if self.main:
                save_model(self.path, self.model, self.spec,
                           {**self.meta, "epoch": epoch, "val": {k: v for k, v in row.items() if k.startswith("val_")}})
        row["best_epoch"] = progress.best_epoch
