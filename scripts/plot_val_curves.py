"""Validation PGD-20 per epoch of trained runs, straight from their ``metrics.jsonl``: the study's
figure (:func:`ratkit.study.plots.plot_val_curves`) before the runs are evaluated, and a table of
each run's best and last epoch. For a pilot, whose question (does robust accuracy fall after its
peak?) the training curves answer.

    python scripts/plot_val_curves.py runs/study-regime-pilot --out docs/results/regime-pilot/val_curves.png

Every subdirectory with a ``metrics.jsonl`` is a run; its configuration is the directory name
without its ``-seed<N>`` suffix.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from ratkit.study.plots import plot_val_curves


def load_runs(study_dir: Path) -> list[dict]:
    records = []
    for metrics in sorted(study_dir.glob("*/metrics.jsonl")):
        run = metrics.parent
        history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
        records.append({"run": run.name, "config": re.sub(r"-seed\d+$", "", run.name), "history": history,
                        "config_full": config})
    return records


SMOOTH = 5  # validations in the moving mean of the smoothed gap


def smoothed_gap(values: list[float], k: int = SMOOTH) -> tuple[float, float] | None:
    """The peak of the k-validation moving mean and the mean of the last k validations.

    The best single validation is the maximum of many noisy ones (PGD-20 on 1,000 images has a
    standard error of about 1.5 points), so best - last overstates a decline; the means do not."""
    if len(values) < k:
        return None
    means = [sum(values[i:i + k]) / k for i in range(len(values) - k + 1)]
    return max(means), means[-1]


def summary_lines(records: list[dict]) -> list[str]:
    lines = ["| run | epochs | best val PGD-20 (epoch) | last val PGD-20 | best - last | "
             f"smoothed peak - last ({SMOOTH} validations) | last train adv acc |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        rows = [row for row in r["history"] if "val_pgd20" in row]
        if not rows:
            continue
        best = max(rows, key=lambda row: row["val_pgd20"])
        last = rows[-1]
        smooth = smoothed_gap([100 * row["val_pgd20"] for row in rows])
        smooth_text = "" if smooth is None else f"{smooth[0]:.1f} - {smooth[1]:.1f} = {smooth[0] - smooth[1]:.1f}"
        lines.append(f"| {r['run']} | {last['epoch']} | {100 * best['val_pgd20']:.1f} ({best['epoch']}) | "
                     f"{100 * last['val_pgd20']:.1f} | {100 * (best['val_pgd20'] - last['val_pgd20']):.1f} | "
                     f"{smooth_text} | {100 * last.get('train_adv_acc', float('nan')):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    records = load_runs(args.study_dir)
    configs = list(dict.fromkeys(r["config"] for r in records))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_val_curves({"grid": {"pairs": [], "runs": configs}}, records, args.out)
    print("\n".join(summary_lines(records)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
