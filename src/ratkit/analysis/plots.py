"""PNG figures of loss landscapes: overlaid 1-D curves (to compare checkpoints) and 2-D contours.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so plotting never changes
the process-wide backend or leaves figures open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .landscape import LandscapeResult

METRICS = ("loss", "accuracy", "both")


def _metrics(metric: str) -> tuple[str, ...]:
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} is not one of {METRICS}")
    return ("loss", "accuracy") if metric == "both" else (metric,)


def _series(result: LandscapeResult, metric: str) -> list[tuple[str, list]]:
    """(kind, values) for the clean curve and, if measured, the adversarial one."""
    out = [("clean", getattr(result, f"clean_{metric}"))]
    adv = getattr(result, f"adversarial_{metric}")
    if adv is not None:
        out.append((f"adv. ({result.settings.adversarial})", adv))
    return out


def _save(fig, path: str | os.PathLike) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(target, format="png", dpi=120, bbox_inches="tight")
    return target


def plot_landscape_1d(
    results: Sequence[LandscapeResult],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    metric: str = "both",
    title: str = "",
) -> Path:
    """Overlay 1-D landscapes (one colour per result; clean solid, adversarial dashed) as a PNG.

    Example::

        plot_landscape_1d([land_trades, land_rat], "landscape.png", labels=["TRADES", "RAT-TRADES"])
    """
    from matplotlib.figure import Figure

    results = list(results)
    if not results:
        raise ValueError("no landscapes to plot")
    if any(r.settings.dim != 1 for r in results):
        raise ValueError("plot_landscape_1d needs 1-D landscapes (dim=1)")
    labels = list(labels) if labels is not None else [r.label or f"model {i + 1}" for i, r in enumerate(results)]
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} landscapes")
    metrics = _metrics(metric)
    fig = Figure(figsize=(5.5 * len(metrics), 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    colours = [f"C{i % 10}" for i in range(len(results))]
    for ax, m in zip(axes, metrics):
        for result, label, colour in zip(results, labels, colours):
            for kind, values in _series(result, m):
                style = "-" if kind == "clean" else "--"
                ax.plot(result.coordinates, values, style, color=colour, marker=".", label=f"{label}, {kind}")
        ax.axvline(0.0, color="0.7", linewidth=0.8)
        ax.set_xlabel("step along a filter-normalised direction")
        ax.set_ylabel("mean cross-entropy" if m == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    s = results[0].settings
    fig.suptitle(title or f"loss landscape (n={s.n}, seed={s.seed})")
    return _save(fig, path)


def plot_landscape_2d(
    result: LandscapeResult,
    path: str | os.PathLike,
    *,
    metric: str = "loss",
    levels: int = 20,
    title: str = "",
) -> Path:
    """Contour plot of a 2-D landscape, one panel per input kind (clean, adversarial), as a PNG."""
    import numpy as np
    from matplotlib.figure import Figure

    if result.settings.dim != 2:
        raise ValueError("plot_landscape_2d needs a 2-D landscape (dim=2)")
    if metric == "both":
        raise ValueError("plot_landscape_2d draws one metric: 'loss' or 'accuracy'")
    (m,) = _metrics(metric)
    series = _series(result, m)
    fig = Figure(figsize=(5.2 * len(series), 4.4), layout="constrained")
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    coords = np.asarray(result.coordinates)
    for ax, (kind, grid) in zip(axes, series):
        z = np.asarray(grid).T  # grid[i][j] is at (alpha_i, beta_j); contour wants z[row=beta][col=alpha]
        filled = ax.contourf(coords, coords, z, levels=levels, cmap="viridis")
        lines = ax.contour(coords, coords, z, levels=levels, colors="k", linewidths=0.4)
        ax.clabel(lines, lines.levels[::4], fontsize=6, fmt="%.3g")
        fig.colorbar(filled, ax=ax)
        ax.plot([0.0], [0.0], marker="*", color="red", markersize=9)
        ax.set_title(kind)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
        ax.set_aspect("equal")
        ax.locator_params(nbins=5)
    name = result.label or "model"
    fig.suptitle(title or f"{name}: {'mean cross-entropy' if m == 'loss' else 'accuracy'} "
                          f"(n={result.settings.n}, seed={result.settings.seed})")
    return _save(fig, path)
