"""What a run reports, written by rank 0 only (the other ranks' :class:`RunLog` is silent): a
progress bar per epoch, a line per epoch on the console, a row per epoch in ``metrics.jsonl``,
TensorBoard scalars (when tensorboard is installed) and ``curves.png`` at the end.

Warnings (a collapsing robust accuracy) go to stderr even when quiet: the user must see them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .state import Progress


class RunLog:
    """The reports of one run in ``run_dir``; ``epochs`` is the number the run trains.

    Example::

        log = RunLog(run_dir, epochs=10, quiet=False, main=True)
        log.epoch_done(row)   # after every epoch
        log.finish(history)   # curves.png
    """

    def __init__(self, run_dir: Path, *, epochs: int, quiet: bool, main: bool):
        self.run_dir, self.epochs, self.quiet, self.main = run_dir, epochs, quiet, main
        self._tb = None  # opened at the first epoch's row: a resume refused before it writes nothing

    @property
    def tb(self):
        """The TensorBoard writer (rank 0, tensorboard installed), else None."""
        if self._tb is None and self.main:
            self._tb = _tensorboard_writer(self.run_dir) or False
        return self._tb or None

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def epoch_bar(self, epoch: int, steps: int, initial: int):
        """The progress bar of ``epoch`` (0-based), starting at step ``initial`` on a resume."""
        from ..progress import progress

        return progress(steps, f"epoch {epoch + 1}/{self.epochs}", "step", quiet=self.quiet, main=self.main,
                        initial=initial)

    def epoch_done(self, row: dict) -> None:
        """The metrics ``row`` of a finished epoch to metrics.jsonl, TensorBoard and the console."""
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
        if not self.quiet and self.main:
            val = (f", val clean {100 * row['val_clean']:.2f}%, val PGD-20 {100 * row['val_pgd20']:.2f}%"
                   if "val_clean" in row else "")
            print(f"epoch {row['epoch']}/{self.epochs}: loss {row['train_loss']:.4f}, "
                  f"train adv acc {100 * row['train_adv_acc']:.2f}%{val}, {row['train_seconds']:.0f} s "
                  f"({row['images_per_s']:.0f} img/s)", flush=True)
        if "warning" in row and self.main:
            print(f"warning: {row['warning']}", file=sys.stderr, flush=True)

    def rewrite(self, history: list[dict]) -> None:
        """metrics.jsonl as ``history`` says: on a resume, it may hold an epoch logged after the
        last checkpoint was written (kill -9)."""
        if self.main:
            with open(self.metrics_path, "w") as f:
                for row in history:
                    f.write(json.dumps(row) + "\n")

    def budget_reached(self, budget: float, progress: Progress) -> None:
        if self.main:
            print(f"time budget of {budget:g} s of training reached after epoch {progress.epoch} "
                  f"({progress.train_seconds:.0f} s); stopping", flush=True)

    def finish(self, history: list[dict]) -> None:
        if self.main:
            plot_curves(history, self.run_dir / "curves.png")


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracies per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    for key, label in [("train_adv_acc", "train (adversarial)"), ("val_clean", "val clean"), ("val_pgd20", "val PGD-20")]:
        rows = [r for r in history if key in r]  # validation may skip epochs (train.val_every)
        if rows:
            ax2.plot([r["epoch"] for r in rows], [100 * r[key] for r in rows], marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
