"""Aggregation of a study's result files: mean and sample standard deviation over seeds per
configuration, and for every pair the paired difference (with RAT minus base, same seed) with its
mean, standard deviation and a two-sided paired t-test p-value.

Every run is evaluated on its ``best`` checkpoint (by validation PGD-20). Where robust overfitting
sets in (Rice et al. 2020), ``checkpoints: [best, last]`` also evaluates the last epoch's weights;
the record then holds ``last`` and ``best_minus_last``, aggregated here the same way.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict

from .grid import StudyGrid
from .records import ACCURACY_KEYS

FLATNESS_KEYS = ("hessian_top_eigenvalue", "hessian_trace", "adv_loss_rise", "adv_accuracy_drop", "logit_norm",
                 "top_probability")


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def paired_t_p_value(diffs: list[float]) -> float | None:
    """Two-sided p-value of a paired t-test of mean(diffs) = 0 (None with fewer than 2 pairs).

    >>> paired_t_p_value([0.01, 0.02, 0.015])
    """
    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if statistics.mean(diffs) != 0 else 1.0
    t = statistics.mean(diffs) / (sd / math.sqrt(len(diffs)))
    from scipy import stats

    return float(2 * stats.t.sf(abs(t), df=len(diffs) - 1))


def _paired(diffs: list[float]) -> dict:
    """Per-seed differences with their mean, standard deviation and paired t-test p-value."""
    return {**_mean_std(diffs), "diffs": diffs, "p_value": paired_t_p_value(diffs)}


def flatness_values(record: dict) -> dict[str, float]:
    """Scalar flatness measures of one run (those it has).

    ``adv_loss_rise`` / ``adv_accuracy_drop``: the adversarial loss rise / accuracy drop from the
    trained weights, averaged over all points of the 1-D landscape. The accuracy drop does not
    depend on the scale of the logits; the loss and the Hessian do, which is why the clean
    ``logit_norm`` and ``top_probability`` (mean softmax confidence) are reported beside them.
    """
    out = {}
    h = record.get("hessian") or {}
    for key in ("top_eigenvalue", "trace"):
        if h.get(key) is not None:
            out[f"hessian_{key}"] = h[key]
    land = record.get("landscape")
    if land and land.get("adversarial_loss") is not None:
        centre = len(land["coordinates"]) // 2
        loss, acc = land["adversarial_loss"], land["adversarial_accuracy"]
        out["adv_loss_rise"] = statistics.mean(v - loss[centre] for v in loss)
        out["adv_accuracy_drop"] = statistics.mean(acc[centre] - v for v in acc)
    clean = (record.get("outputs") or {}).get("clean")
    if clean:
        out["logit_norm"], out["top_probability"] = clean["logit_norm"], clean["top_probability"]
    return out


def epoch_seconds(record: dict) -> float:
    """Training seconds per epoch of one run: the median over its epochs, so that one epoch slowed
    by other work on the machine (or a pause) does not move it; the mean if there is no history."""
    per_epoch = [r["train_seconds"] for r in record.get("history", []) if r.get("train_seconds")]
    return statistics.median(per_epoch) if per_epoch else record["seconds_per_epoch"]


def _mean_curves(rows: list[dict]) -> dict | None:
    """The landscapes of ``rows`` averaged point by point (they share coordinates), or None."""
    lands = [r["landscape"] for r in rows if r.get("landscape")]
    if not lands or any(land["coordinates"] != lands[0]["coordinates"] for land in lands):
        return None
    out = {"coordinates": lands[0]["coordinates"], "adversarial": lands[0]["adversarial"], "n": lands[0]["n"],
           "seeds": [r["seed"] for r in rows if r.get("landscape")]}
    for key in ("clean_loss", "clean_accuracy", "adversarial_loss", "adversarial_accuracy"):
        if all(land.get(key) is not None for land in lands):
            out[key] = [statistics.mean(column) for column in zip(*(land[key] for land in lands))]
    return out


def _accuracy_stats(accuracies: list[dict]) -> dict:
    """Per accuracy key, mean +- std over the runs that measured it, and the images it was measured on."""
    out = {}
    for key in ACCURACY_KEYS:
        have = [a[key] for a in accuracies if key in a]
        if have:
            out[key] = {**_mean_std([a["accuracy"] for a in have]), "images": have[0]["n"]}
    return out


def _last_entry(rows: list[dict]) -> dict | None:
    """The last checkpoint of a configuration's runs that have it: epochs, accuracies, best − last."""
    rows = [r for r in rows if "last" in r]
    if not rows:
        return None
    gaps = {}
    for key in ACCURACY_KEYS:
        values = [r["best_minus_last"][key] for r in rows if key in r["best_minus_last"]]
        if values:
            gaps[key] = _mean_std(values)
    return {"seeds": [r["seed"] for r in rows], "epochs": [r["last"]["epoch"] for r in rows],
            "best_epochs": [r["best_epoch"] for r in rows],
            "accuracy": _accuracy_stats([r["last"]["accuracy"] for r in rows]), "best_minus_last": gaps}


def _config_entry(rows: list[dict]) -> dict:
    """One configuration over its seeds: accuracies, seconds per epoch, flatness, landscape, last."""
    entry = {"seeds": [r["seed"] for r in rows], "seconds_per_epoch": _mean_std([epoch_seconds(r) for r in rows]),
             **_accuracy_stats([r["accuracy"] for r in rows])}
    flat = [flatness_values(r) for r in rows]
    for key in FLATNESS_KEYS:
        values = [f[key] for f in flat if key in f]
        if values:
            entry[key] = _mean_std(values)
    curves = _mean_curves(rows)
    if curves:
        entry["landscape"] = curves
    last = _last_entry(rows)
    if last:
        entry["last"] = last
    return entry


def _paired_keys(by: dict, with_rat: str, base: str, seeds: list[int], value) -> dict:
    """Per accuracy key, the paired difference (with RAT − base) over the seeds where both sides have it;
    ``value(record, key)`` is the number compared, or None where the record lacks it."""
    out = {}
    for key in ACCURACY_KEYS:
        values = [(value(by[(with_rat, s)], key), value(by[(base, s)], key)) for s in seeds]
        diffs = [r - b for r, b in values if r is not None and b is not None]
        if diffs:
            out[key] = _paired(diffs)
    return out


def _accuracy_of(record: dict, key: str) -> float | None:
    return record["accuracy"][key]["accuracy"] if key in record["accuracy"] else None


def _last_accuracy_of(record: dict, key: str) -> float | None:
    return record["last"]["accuracy"][key]["accuracy"] if key in record["last"]["accuracy"] else None


def _gap_of(record: dict, key: str) -> float | None:
    return record["best_minus_last"].get(key)


def _pair_entry(by: dict, with_rat: str, base: str, seeds: list[int]) -> dict:
    """One pair over the seeds both sides have: paired accuracy and flatness differences, time ratio, last."""
    pair = {"with_rat": with_rat, "base": base, "seeds": seeds, **_paired_keys(by, with_rat, base, seeds, _accuracy_of)}
    flat = {c: [flatness_values(by[(c, s)]) for s in seeds] for c in (with_rat, base)}
    for key in FLATNESS_KEYS:
        if all(key in f for c in flat for f in flat[c]):
            pair[key] = _paired([r[key] - b[key] for r, b in zip(flat[with_rat], flat[base])])
    times = [epoch_seconds(by[(with_rat, s)]) / epoch_seconds(by[(base, s)]) for s in seeds]
    pair["time_ratio"] = _mean_std(times)
    last_seeds = [s for s in seeds if "last" in by[(with_rat, s)] and "last" in by[(base, s)]]
    if last_seeds:
        pair["last"] = {"seeds": last_seeds,
                        "accuracy": _paired_keys(by, with_rat, base, last_seeds, _last_accuracy_of),
                        "best_minus_last": _paired_keys(by, with_rat, base, last_seeds, _gap_of)}
    return pair


def aggregate(grid: StudyGrid, records: list[dict]) -> dict:
    """Per configuration mean +- std over seeds; per pair the paired difference over common seeds.

    Each accuracy is aggregated over the seeds that measured it. Records with ``last`` (grids
    with ``checkpoints: [best, last]``) add, per configuration and per pair, the same for the
    last checkpoint's accuracies and for best − last, under ``last``.

    >>> result = aggregate(grid, read_results("docs/results/core"))
    >>> result["pairs"][0]["pgd20"]["p_value"]
    """
    by = {(r["config"], r["seed"]): r for r in records if r.get("grid", grid.name) == grid.name}
    configs = {}
    for name in grid.runs:
        rows = [r for (c, _), r in sorted(by.items()) if c == name]
        if rows:
            configs[name] = _config_entry(rows)
    pairs = []
    for with_rat, base in grid.pairs:
        seeds = sorted(s for (c, s) in by if c == with_rat and (base, s) in by)
        if seeds:
            pairs.append(_pair_entry(by, with_rat, base, seeds))
    grid_dict = asdict(grid)
    if grid.checkpoints == ["best"]:
        del grid_dict["checkpoints"]  # the default: results.json as it was before the option existed
    return {"grid": grid_dict, "configs": configs, "pairs": pairs,
            "runs": [{k: v for k, v in r.items() if k != "config_full"} for r in records]}
