"""The warning that validation robust accuracy is collapsing (written to the metrics row of the
epoch and to stderr by the trainer)."""

from __future__ import annotations


def robust_collapse(history: list[dict], margin: float | None, epochs: int) -> str | None:
    """A warning when validation PGD-20 has stayed more than ``margin`` points below its best for
    the last ``epochs`` epochs (None otherwise): a model whose robustness collapses while its
    clean accuracy rises is usually masking gradients (docs/method.md, RAT on bases without a
    clean term), and the best checkpoint then comes from an early epoch.

    The latest row is the one judged: an epoch left unvalidated (``train.val_every``) has nothing
    new to warn about, so it gives None rather than repeating the warning of the epochs before it.

    Example: ``robust_collapse(trainer.progress.history, margin=5.0, epochs=2)``.
    """
    rows = [r for r in history if "val_pgd20" in r]
    if margin is None or not history or "val_pgd20" not in history[-1] or len(rows) <= epochs:
        return None
    best = max(rows, key=lambda r: r["val_pgd20"])
    recent = rows[-epochs:]
    if any(best is r for r in recent) or any(100 * (best["val_pgd20"] - r["val_pgd20"]) <= margin for r in recent):
        return None
    last = rows[-1]
    return (f"validation PGD-20 {100 * last['val_pgd20']:.2f}% at epoch {last['epoch']} has been more than "
            f"{margin:g} points below its best ({100 * best['val_pgd20']:.2f}% at epoch {best['epoch']}) "
            f"for {epochs} epochs: robust accuracy is collapsing")
