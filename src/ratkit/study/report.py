"""The study's report: results.md (tables), results.json (the aggregate) and the plots, from the result files.

``rat study --aggregate-only`` remakes all of them from the committed result files alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..files import atomic_write_bytes, write_json_atomic
from .aggregate import FLATNESS_KEYS, aggregate
from .grid import StudyGrid
from .records import ACCURACY_KEYS, read_results

ACCURACY_NAMES = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "cw30": "CW-30", "aa": "AutoAttack",
                  "robust": "worst case"}
FLATNESS_NAMES = {"hessian_top_eigenvalue": "top eig. (adv.)", "hessian_trace": "trace (adv.)",
                  "adv_loss_rise": "adv. loss rise", "adv_accuracy_drop": "adv. acc. drop (pp)",
                  "logit_norm": "logit norm", "top_probability": "confidence (%)"}
PERCENT_KEYS = ("adv_accuracy_drop", "top_probability")


def _pct(entry: dict | None) -> str:
    if not entry:
        return "–"
    std = f" ± {100 * entry['std']:.2f}" if entry.get("std") is not None else ""
    return f"{100 * entry['mean']:.2f}{std}"


def _flat(key: str, value: float) -> str:
    return f"{100 * value:.2f}" if key in PERCENT_KEYS else f"{value:.3g}"


def _diff_cell(d: dict | None, scale: float = 100.0, fmt: str = "+.2f") -> str:
    if d is None:
        return "–"
    std = f" ± {scale * d['std']:.2f}" if d["std"] is not None else ""
    pv = f" (p {d['p_value']:.2f})" if d.get("p_value") is not None else ""  # none for a configuration's mean
    return f"{scale * d['mean']:{fmt}}{std}{pv}"


def _fewer(entry: dict | None, seeds: int) -> str:
    """A note on a cell measured on fewer seeds than its row has (an attack some seeds lack)."""
    return f" ({entry['n']} of {seeds} seeds)" if entry and entry["n"] != seeds else ""


def _table(title: str, head: str, columns: int, rows: list[str]) -> list[str]:
    """A Markdown table under a heading, after a blank line."""
    return ["", title, "", head, "|" + "---|" * columns, *rows]


def _pair_name(p: dict) -> str:
    return f"{p['with_rat']} − {p['base']}"


def _present(keys, entries) -> list[str]:
    """Those of ``keys`` that at least one of ``entries`` has."""
    return [k for k in keys if any(k in e for e in entries)]


def _config_table(result: dict, keys: list[str], flat_keys: list[str], which: str) -> list[str]:
    """The per-configuration table: accuracies, seconds per epoch, flatness."""
    configs = result["configs"]
    images = {k: next(c[k]["images"] for c in configs.values() if k in c) for k in keys}
    lines = [f"# Study `{result['grid']['name']}`: accuracy (%){which} as mean ± std over seeds", "",
             "| configuration | seeds | " + " | ".join(f"{ACCURACY_NAMES[k]} ({images[k]})" for k in keys)
             + " | s / epoch (median) | " + "".join(f"{FLATNESS_NAMES[k]} | " for k in flat_keys),
             "|---|---|" + "---|" * len(keys) + "---|" + "---|" * len(flat_keys)]
    for name, c in configs.items():
        lines.append(f"| {name} | {len(c['seeds'])} | "
                     + " | ".join(_pct(c.get(k)) + _fewer(c.get(k), len(c["seeds"])) for k in keys)
                     + f" | {c['seconds_per_epoch']['mean']:.0f} | "
                     + "".join((_flat(k, c[k]["mean"]) if k in c else "–") + " | " for k in flat_keys))
    return lines


def _last_tables(lasts: dict[str, dict], keys: list[str]) -> list[str]:
    """The last checkpoint's accuracy per configuration, and the best − last gap."""
    last_keys = _present(keys, [last["accuracy"] for last in lasts.values()])
    gap_keys = _present(keys, [last["best_minus_last"] for last in lasts.values()])
    accuracy_rows = [f"| {name} | {len(last['seeds'])} | {', '.join(map(str, sorted(set(last['epochs']))))} | "
                     + " | ".join(_pct(last["accuracy"].get(k)) + _fewer(last["accuracy"].get(k), len(last["seeds"]))
                                  for k in last_keys) + " |" for name, last in lasts.items()]
    gap_rows = [f"| {name} | {len(last['seeds'])} | {', '.join(map(str, last['best_epochs']))} | " + " | ".join(
        _diff_cell(last["best_minus_last"].get(k)) + _fewer(last["best_minus_last"].get(k), len(last["seeds"]))
        for k in gap_keys) + " |" for name, last in lasts.items()]
    return (_table("## Last epoch: the last checkpoint's accuracy (%), mean ± std over seeds",
                   "| configuration | seeds | epoch | " + " | ".join(ACCURACY_NAMES[k] for k in last_keys) + " |",
                   3 + len(last_keys), accuracy_rows)
            + _table("## Best − last checkpoint (percentage points; positive robust columns: robust overfitting, "
                     "the best epoch by validation PGD-20 is more robust than the last)",
                     "| configuration | seeds | best epoch (per seed) | "
                     + " | ".join(ACCURACY_NAMES[k] for k in gap_keys) + " |", 3 + len(gap_keys), gap_rows))


def _pair_table(pairs: list[dict], keys: list[str]) -> list[str]:
    """RAT − base per pair on the best checkpoint, with p-values and the time ratio."""
    rows = [f"| {_pair_name(p)} | {len(p['seeds'])} | "
            + " | ".join(_diff_cell(p.get(k)) + _fewer(p.get(k), len(p["seeds"])) for k in keys)
            + f" | {p['time_ratio']['mean']:.3f} |" for p in pairs]
    return _table("## RAT − base, paired over seeds (percentage points; p: two-sided paired t-test)",
                  "| pair | seeds | " + " | ".join(ACCURACY_NAMES[k] for k in keys) + " | time ratio (s / epoch) |",
                  3 + len(keys), rows)


def _last_pair_tables(pairs: list[dict], keys: list[str]) -> list[str]:
    """RAT − base at the last epoch and of best − last, for the pairs with the last checkpoint."""
    last_pairs = [p for p in pairs if "last" in p]
    lines = []
    for part, title in (("accuracy", "at the last epoch"),
                        ("best_minus_last", "of best − last (negative: RAT overfits less)")):
        part_keys = _present(keys, [p["last"][part] for p in last_pairs])
        if not part_keys:
            continue
        rows = [f"| {_pair_name(p)} | {len(p['last']['seeds'])} | " + " | ".join(
            _diff_cell(p["last"][part].get(k)) + _fewer(p["last"][part].get(k), len(p["last"]["seeds"]))
            for k in part_keys) + " |" for p in last_pairs]
        lines += _table(f"## RAT − base {title}, paired over seeds (percentage points)",
                        "| pair | seeds | " + " | ".join(ACCURACY_NAMES[k] for k in part_keys) + " |",
                        2 + len(part_keys), rows)
    return lines


def _flatness_pair_table(pairs: list[dict], flat_keys: list[str]) -> list[str]:
    """RAT − base of the flatness and output-scale measures, where the pairs have them."""
    pair_flat = _present(flat_keys, pairs)
    if not pair_flat:
        return []
    rows = [f"| {_pair_name(p)} | {len(p['seeds'])} | " + " | ".join(
        _diff_cell(p.get(k), 100.0 if k in PERCENT_KEYS else 1.0, "+.2f" if k in PERCENT_KEYS else "+.3g")
        for k in pair_flat) + " |" for p in pairs]
    return _table("## Flatness and output scale, RAT − base, paired over seeds (negative: RAT flatter, "
                  "or softer outputs)",
                  "| pair | seeds | " + " | ".join(FLATNESS_NAMES[k] for k in pair_flat) + " |", 2 + len(pair_flat),
                  rows)


def _machines(runs: list[dict]) -> list[str]:
    """Where the runs were evaluated: seconds compare only on one machine."""
    machines = sorted({f"{m.get('cpu')} ({m.get('threads')} threads, torch {m.get('torch')})"
                       + (f", {m['gpu']}" if m.get("gpu") else "") for m in
                       (r.get("machine") for r in runs) if m})
    unknown = sum(1 for r in runs if not r.get("machine"))
    if not (machines or unknown):
        return []
    return ["", "Machines: " + "; ".join(machines) + (f"; not recorded for {unknown} run(s)" if unknown else "")]


def format_markdown(result: dict) -> str:
    """results.md: the per-configuration table, the paired RAT − base tables (accuracy, flatness);
    with the last checkpoint evaluated, its table and the best − last gap beside them.

    >>> Path("results.md").write_text(format_markdown(aggregate(grid, records)))
    """
    configs, pairs = result["configs"], result["pairs"]
    keys = _present(ACCURACY_KEYS, configs.values())
    flat_keys = _present(FLATNESS_KEYS, configs.values())
    lasts = {name: c["last"] for name, c in configs.items() if "last" in c}
    which = " of the best checkpoint (by validation PGD-20)" if lasts else ""
    lines = _config_table(result, keys, flat_keys, which)
    if lasts:
        lines += _last_tables(lasts, keys)
    if pairs:
        lines += _pair_table(pairs, keys) + _last_pair_tables(pairs, keys) + _flatness_pair_table(pairs, flat_keys)
    lines += _machines(result["runs"])
    name = result["grid"]["name"]
    lines += ["", f"Made by `rat study --grid {name} --commit` (each run's result file, then this aggregate); "
              f"`rat study --grid {name} --aggregate-only` remakes this page, results.json and the plots "
              "from the committed result files."]
    return "\n".join(lines) + "\n"


def write_aggregate(grid: StudyGrid, results_dir: str | os.PathLike) -> dict:
    """results.json, results.md and the plots, next to the per-run result files.

    >>> write_aggregate(load_grid("configs/studies/core.yaml"), "docs/results/core")["files"]
    """
    from .plots import plot_study

    results_dir = Path(results_dir)
    records = [r for r in read_results(results_dir) if r.get("grid", grid.name) == grid.name]
    result = aggregate(grid, records)
    write_json_atomic(results_dir / "results.json", result)
    atomic_write_bytes(results_dir / "results.md", format_markdown(result).encode())
    result["files"] = [str(p) for p in plot_study(result, records, results_dir)]
    return result
