"""Validation curves of run directories, as one small JSON and a plot (issue 15's diagnosis).

    python scripts/val_curves.py --out docs/results/rat-at-diagnosis/val_curves DIR [DIR ...]

Each DIR is a run directory (its metrics.jsonl) or a folder of them. Writes OUT.json (per run:
epoch, val_clean, val_pgd20, warning) and OUT.png (validation PGD-20 per epoch).
"""

import argparse
import json
from pathlib import Path


def runs(paths):
    for p in map(Path, paths):
        if (p / "metrics.jsonl").exists():
            yield p
        else:
            yield from sorted(d for d in p.iterdir() if (d / "metrics.jsonl").exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--note", default="", help="where and how the runs were made")
    args = parser.parse_args()
    curves = {}
    for d in runs(args.dirs):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line]
        curves[d.name] = [{k: r[k] for k in ("epoch", "val_clean", "val_pgd20", "warning") if k in r} for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps({"note": args.note, "runs": curves}, indent=1) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, rows in curves.items():
        style = "-" if "authors" in name else ("--" if name.startswith("rat-") else ":")
        ax.plot([r["epoch"] for r in rows], [100 * r["val_pgd20"] for r in rows], style, marker=".", label=name)
    ax.set(xlabel="epoch", ylabel="validation PGD-20 (%)", title="RAT on bases without a clean term")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=80)


if __name__ == "__main__":
    main()
