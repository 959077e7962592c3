"""Does a regime-grid configuration learn, or collapse to a constant classifier, in its first steps?

Per training step of one configuration of ``configs/studies/regime.yaml``: the loss terms, the clean
accuracy on the batch, the spread of the clean logits over the batch (mean over classes of their
standard deviation; 0 when every image gets the same output) and the mean norm of the head's input
features, all at the weights the step's loss saw (under AWP: the perturbed ones). Issue 43 found
``awp-rat-exact-trades`` collapsing within the first epoch (docs/results.md, "Does RAT add to AWP?").

    OMP_NUM_THREADS=1 python scripts/first_steps.py --run awp-rat-exact-trades --seeds 0,1,2 --steps 60 \\
        --json docs/results/regime-first-steps/awp-rat-exact-trades.json

A measurement, not a study run: each seed trains in a temporary directory and stops after ``--steps``
steps; the batches, initial weights and attack are the study run's own (same config and seed).
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from ratkit.config import load_config
from ratkit.methods import base as methods_base
from ratkit.study import load_grid
from ratkit.train import train

STUDIES = Path(methods_base.__file__).resolve().parents[1] / "configs" / "studies"


class Enough(Exception):
    """Raised from the step after --steps steps: the measurement has what it needs."""


def first_steps(cfg, steps: int) -> list[dict]:
    """Train ``cfg`` for ``steps`` steps in a temporary directory; one row per step."""
    rows: list[dict] = []
    original = methods_base.Method.update

    def recorded(self, model, optimizer, x, x_adv, y, *args, **kwargs):
        if len(rows) >= steps:
            raise Enough
        result = original(self, model, optimizer, x, x_adv, y, *args, **kwargs)
        out = result.outputs
        with torch.no_grad():
            logits, feats = out.logits_clean.float(), out.feats_clean.float()
            rows.append({"step": len(rows) + 1,
                         **{k: float(v.detach()) for k, v in result.terms.items()},
                         "clean_acc": float((logits.argmax(1) == y).float().mean()),
                         "logit_spread": float(logits.std(0).mean()),
                         "feature_norm": float(feats.norm(dim=1).mean())})
        return result

    methods_base.Method.update = recorded
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train(cfg, Path(tmp) / "run", quiet=True)
            except Enough:
                pass
    finally:
        methods_base.Method.update = original
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="awp-rat-exact-trades", help="a configuration of the regime grid")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="one more override after the grid's (e.g. attack.precision=float32)")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    args = parser.parse_args()
    grid = load_grid(STUDIES / "regime.yaml")
    result = {"run": args.run, "steps": args.steps, "extra_overrides": args.set, "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = load_config(grid.preset, [*grid.overrides, *grid.runs[args.run], f"train.seed={seed}", *args.set,
                                        "train.val_n=100"])
        rows = first_steps(cfg, args.steps)
        result["seeds"][str(seed)] = rows
        print(f"{args.run}, seed {seed}{' ' + ' '.join(args.set) if args.set else ''}")
        print("| steps | loss terms (mean) | clean acc | logit spread | feature norm |")
        print("|---|---|---|---|---|")
        for start in range(0, len(rows), 10):
            part = rows[start:start + 10]
            terms = {k: statistics.mean(r[k] for r in part) for k in part[0]
                     if k not in ("step", "clean_acc", "logit_spread", "feature_norm")}
            print(f"| {part[0]['step']}-{part[-1]['step']} | "
                  + ", ".join(f"{k} {v:.4f}" for k, v in terms.items())
                  + f" | {statistics.mean(r['clean_acc'] for r in part):.3f}"
                  f" | {statistics.mean(r['logit_spread'] for r in part):.4f}"
                  f" | {statistics.mean(r['feature_norm'] for r in part):.3f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
