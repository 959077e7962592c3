"""The study's figures, one function each, drawn from the aggregate (and the records, for the curves).

Each takes ``(result, records, path)``, writes ``path`` and returns it, or returns None when the
study has nothing to draw for it. matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ..attacks.protocols import PROTOCOL_ATTACKS

PLOTTED_KEYS = (*[k for k, a in PROTOCOL_ATTACKS["ours"].items() if a.plotted], "robust")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _plotted_keys(configs: dict) -> list[str]:
    return [k for k in PLOTTED_KEYS if any(k in c for c in configs.values())]


def plot_accuracy(result: dict, records: list[dict], path: Path) -> Path | None:
    """Bars with error bars: per configuration the mean ± std over seeds of each accuracy."""
    configs = result["configs"]
    keys = _plotted_keys(configs)
    if not (configs and keys):
        return None
    fig, ax = _pyplot().subplots(figsize=(8, 3.5))
    width = 0.8 / len(configs)
    for i, (name, c) in enumerate(configs.items()):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [100 * c[k]["mean"] if k in c else 0 for k in keys], width,
               yerr=[100 * (c[k]["std"] or 0) if k in c else 0 for k in keys], label=name, capsize=2)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], keys)
    ax.set_ylabel("accuracy (%)")
    lows = [100 * c[k]["mean"] for c in configs.values() for k in keys if k in c]
    ax.set_ylim(max(0, min(lows) - 8), min(100, max(lows) + 4))
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _val_styles(result: dict) -> dict[str, tuple[str, str]]:
    """(colour, line style) per configuration: one colour per pair, RAT solid and base dashed."""
    styles: dict[str, tuple[str, str]] = {}
    colour = 0
    for with_rat, base in result["grid"]["pairs"]:
        if with_rat in styles and base in styles:
            continue
        for name, style in ((with_rat, "-"), (base, "--")):
            styles.setdefault(name, (f"C{colour}", style))
        colour += 1
    for name in result["grid"]["runs"]:
        if name not in styles:
            styles[name] = (f"C{colour}", "-")
            colour += 1
    return styles


def _plot_config_curves(ax, name: str, curves: list[dict], colour: str, style: str) -> None:
    """One configuration's validation curves: each seed thin, the mean thick with a dot at its peak."""
    for c in curves:
        ax.plot(list(c), [100 * v for v in c.values()], style, color=colour, alpha=0.3, linewidth=0.8)
    epochs = sorted(set.intersection(*(set(c) for c in curves)))  # the epochs every seed reached
    mean = [100 * statistics.mean(c[e] for c in curves) for e in epochs]
    if epochs:
        ax.plot(epochs, mean, style, color=colour, linewidth=2.0,
                label=f"{name} (mean of {len(curves)} seed{'s' if len(curves) > 1 else ''})")
        peak = max(range(len(mean)), key=mean.__getitem__)
        ax.plot([epochs[peak]], [mean[peak]], "o", color=colour, markersize=4)


def _plot_lr_decays(ax, records: list[dict]) -> None:
    """The learning-rate decays of a multistep schedule, dotted (robust overfitting sets in after the first)."""
    optim = next((r["config_full"]["optim"] for r in records if "optim" in r.get("config_full", {})), None)
    if optim and optim.get("schedule") == "multistep":
        last_epoch = max((row["epoch"] for r in records for row in r.get("history", [])), default=0)
        for m in optim.get("milestones", []):
            if m < last_epoch:
                ax.axvline(m, color="0.6", linestyle=":", linewidth=0.8)


def plot_val_curves(result: dict, records: list[dict], path: Path) -> Path | None:
    """Validation PGD-20 per epoch: per configuration the mean over its seeds (thick; a dot at its
    peak), each seed thin; base dashed beside RAT solid in the pair's colour; the learning-rate
    decays of a multistep schedule as dotted lines."""
    if not any("val_pgd20" in row for r in records for row in r.get("history", [])):
        return None
    fig, ax = _pyplot().subplots(figsize=(6.5, 3.8))
    styles = _val_styles(result)
    for name in result["grid"]["runs"]:
        curves = [{row["epoch"]: row["val_pgd20"] for row in r.get("history", []) if "val_pgd20" in row}
                  for r in records if r["config"] == name]
        curves = [c for c in curves if c]
        if curves:
            _plot_config_curves(ax, name, curves, *styles[name])
    _plot_lr_decays(ax, records)
    ax.set(xlabel="epoch", ylabel="validation PGD-20 (%)")
    ax.set_title("thick: mean over seeds (dot: its peak); thin: each seed", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_differences(result: dict, records: list[dict], path: Path) -> Path | None:
    """The answer to "does RAT help": per pair and measure, each seed's RAT − base and their mean."""
    keys = _plotted_keys(result["configs"])
    pairs = [p for p in result["pairs"] if any(k in p for k in keys)]
    if not pairs:
        return None
    fig, ax = _pyplot().subplots(figsize=(8, 3.2))
    width = 0.8 / len(pairs)
    for i, p in enumerate(pairs):
        for j, k in enumerate(keys):
            if k not in p:
                continue
            x = j + (i - (len(pairs) - 1) / 2) * width
            ax.scatter([x] * len(p[k]["diffs"]), [100 * d for d in p[k]["diffs"]], color=f"C{i}", s=14,
                       alpha=0.6, label=f"{p['with_rat']} − {p['base']} (one seed)" if j == 0 else None)
            ax.plot([x - width / 3, x + width / 3], [100 * p[k]["mean"]] * 2, color=f"C{i}", linewidth=2.5)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(keys)), keys)
    ax.set_ylabel("RAT − base (pp); bar: mean")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _plot_landscape_pair(top, bottom, configs: dict, with_rat: str, base: str) -> None:
    """One pair's column: loss (top) and accuracy (bottom), base and RAT, clean solid, adversarial dashed."""
    for name, colour in ((base, "C0"), (with_rat, "C3")):
        land = configs[name]["landscape"]
        for ax, metric in ((top, "loss"), (bottom, "accuracy")):
            scale = 100 if metric == "accuracy" else 1
            for kind, style in (("clean", "-"), ("adversarial", "--")):
                values = land.get(f"{kind}_{metric}")
                if values is not None:
                    ax.plot(land["coordinates"], [scale * v for v in values], style, color=colour, marker=".",
                            markersize=3, label=f"{name}, {kind}")
    land = configs[base]["landscape"]
    seeds = len(land["seeds"])
    top.set_title(f"{with_rat} vs {base}, mean of {seeds} seed{'s' if seeds > 1 else ''}", fontsize=9)
    top.set_ylabel("mean cross-entropy")
    bottom.set_ylabel("accuracy (%)")
    bottom.set_xlabel("step along a filter-normalised direction\n"
                      f"(adversarial: {land['adversarial']} PGD-10)", fontsize=8)
    for ax in (top, bottom):
        ax.axvline(0.0, color="0.7", linewidth=0.8)
        ax.grid(alpha=0.3)
    top.legend(fontsize=6)


def plot_landscapes(result: dict, records: list[dict], path: Path) -> Path | None:
    """Per pair, the base and RAT landscapes averaged over seeds, overlaid."""
    configs = result["configs"]
    drawn = [(p["with_rat"], p["base"]) for p in result["pairs"]
             if "landscape" in configs.get(p["with_rat"], {}) and "landscape" in configs.get(p["base"], {})]
    if not drawn:
        return None
    fig, axes = _pyplot().subplots(2, len(drawn), figsize=(4.6 * len(drawn), 6.4), squeeze=False)
    for col, (with_rat, base) in enumerate(drawn):
        _plot_landscape_pair(axes[0][col], axes[1][col], configs, with_rat, base)
    return _save(fig, path)


# file name -> figure, in the order they are drawn
FIGURES = {"accuracy.png": plot_accuracy, "val_curves.png": plot_val_curves,
           "differences.png": plot_differences, "landscape.png": plot_landscapes}


def plot_study(result: dict, records: list[dict], directory: Path) -> list[Path]:
    """Every figure the study has data for, in ``directory``; the files written.

    >>> plot_study(result, read_results("docs/results/core"), Path("docs/results/core"))
    """
    files = [plot(result, records, Path(directory) / name) for name, plot in FIGURES.items()]
    return [f for f in files if f is not None]
