"""The sizes behind exact-head's relative normalisers, over the first epochs of the regime grid's
rat-exact-trades (issue 32): per training step the batch's tr H_adv + tr H_nat and
||G_adv||_F + ||G_nat||_F, and the sigma at which each absolute term equals its relative one,
sigma_2 = sqrt(2 / (tr H_adv + tr H_nat)) and sigma_1 = 1 / (||G_adv|| + ||G_nat||).

    OMP_NUM_THREADS=1 python scripts/head_taylor_scales.py --epochs 2

A measurement, not a study run: it trains one short run in a temporary directory (validation
only at the end, on 100 images) and prints a table per epoch (medians over the epoch's steps).
Two epochs took 10 minutes on this project's 2-core CPU while three study runs shared it.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from ratkit.config import load_config
from ratkit.methods import rat as rat_module
from ratkit.study import load_grid
from ratkit.train import train

STUDIES = Path(rat_module.__file__).resolve().parents[1] / "configs" / "studies"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid = load_grid(STUDIES / "regime.yaml")
    cfg = load_config(grid.preset, [*grid.overrides, *grid.runs["rat-exact-trades"], f"train.seed={args.seed}",
                                    f"train.epochs={args.epochs}", f"train.val_every={args.epochs}",
                                    "train.val_n=100"])
    rows: list[tuple[float, float, float, float]] = []
    original = rat_module.RAT.exact_head_terms

    def recorded(self, out):
        with torch.no_grad():
            g_nat, tr_nat = rat_module.head_taylor_statistics(out.logits_clean, out.feats_clean, out.y)
            g_adv, tr_adv = rat_module.head_taylor_statistics(out.logits_adv, out.feats_adv, out.y)
            norm = torch.linalg.matrix_norm
            rows.append((tr_adv.item(), tr_nat.item(), norm(g_adv).item(), norm(g_nat).item()))
        return original(self, out)

    rat_module.RAT.exact_head_terms = recorded
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run", quiet=True)
    steps = len(rows) // args.epochs
    print("| epoch | tr H_adv | tr H_nat | ||G_adv|| | ||G_nat|| | sigma_2 | sigma_1 |")
    print("|---|---|---|---|---|---|---|")
    for e in range(args.epochs):
        part = rows[e * steps:(e + 1) * steps]
        med = [statistics.median(r[i] for r in part) for i in range(4)]
        s2 = statistics.median((2 / (r[0] + r[1])) ** 0.5 for r in part)
        s1 = statistics.median(1 / (r[2] + r[3]) for r in part)
        print(f"| {e + 1} | {med[0]:.3g} | {med[1]:.3g} | {med[2]:.3g} | {med[3]:.3g} | {s2:.3g} | {s1:.3g} |")


if __name__ == "__main__":
    main()
