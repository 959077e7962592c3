"""The warnings that training is collapsing: validation robust accuracy falling from its best, or the
model at chance with one output for every image (written to the metrics row of the epoch and to stderr
by the trainer)."""

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


def constant_output(history: list[dict], num_classes: int, epochs: int) -> str | None:
    """A warning when the last ``epochs`` validations (two at least) all found the model at chance: clean
    accuracy at most 1.5 / ``num_classes`` and PGD-20 taking nothing from it. That is a model giving one output for every image, from which training rarely recovers: measured on
    the regime grid, AWP without warm-up around RAT's exact-head terms ended there within 40 steps
    (docs/results.md, "Does RAT add to AWP?"). None otherwise.

    Example: ``constant_output(trainer.progress.history, num_classes=10, epochs=2)``.
    """
    rows = [r for r in history if "val_pgd20" in r and "val_clean" in r]
    if not history or "val_pgd20" not in history[-1] or len(rows) < max(2, epochs):
        return None
    recent = rows[-max(2, epochs):]
    if not all(r["val_clean"] <= 1.5 / num_classes and r["val_pgd20"] >= r["val_clean"] for r in recent):
        return None
    return (f"validation accuracy has stayed at chance ({100 * recent[-1]['val_clean']:.2f}% clean, PGD-20 "
            f"taking nothing from it) for {len(recent)} validations: the model gives one output for every image "
            f"and training has collapsed")
